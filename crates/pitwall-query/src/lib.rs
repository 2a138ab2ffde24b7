//! pitwall-query
