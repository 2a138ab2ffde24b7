//! pitwall-lake
