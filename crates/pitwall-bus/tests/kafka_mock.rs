//! The Kafka bus against librdkafka's in-process mock cluster: quick checks of the
//! client settings (the pipeline tests run against a real broker).

use std::time::Duration;

use pitwall_bus::kafka::{KafkaConfig, KafkaConsumer, KafkaProducer};
use pitwall_bus::partition_for;
use rdkafka::mocking::MockCluster;

fn config(brokers: String) -> KafkaConfig {
    KafkaConfig {
        brokers,
        group_id: format!("test-{}", std::process::id()),
        ..KafkaConfig::default()
    }
}

#[tokio::test]
async fn keys_land_where_the_java_client_puts_them_and_come_back_in_order() {
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("telemetry.raw", 3, 1).unwrap();
    let config = config(cluster.bootstrap_servers());
    config.validate().unwrap();
    let producer = KafkaProducer::new(&config, "telemetry.raw").unwrap();
    let drivers = [
        "VER",
        "HAM",
        "LEC",
        "NOR",
        "ALO",
        "PIA",
        "sensor-007",
        "a-little-bit-longer-string",
    ];
    let mut sent = Vec::new();
    for round in 0..5i64 {
        for d in drivers {
            let payload = format!("{d}:{round}");
            let (partition, offset) = producer
                .send(
                    Some(d.as_bytes()),
                    payload.as_bytes(),
                    1_767_225_600_000_000_000 + round * 1_000_000,
                )
                .await
                .unwrap();
            assert_eq!(
                partition,
                partition_for(d.as_bytes(), 3),
                "key {d}: librdkafka and murmur2 disagree"
            );
            sent.push((partition, offset, d, payload));
        }
    }
    producer.flush(Duration::from_secs(5)).unwrap();

    let consumer = KafkaConsumer::subscribe(&config, &["telemetry.raw"]).unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("messages arrive")
            .unwrap();
        got.push(m);
    }
    for (partition, offset, key, payload) in &sent {
        let m = got
            .iter()
            .find(|m| m.partition == *partition && m.offset == *offset)
            .unwrap_or_else(|| panic!("{key} at {partition}/{offset} not received"));
        assert_eq!(m.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(m.payload, payload.as_bytes());
    }
    // Within a partition, offsets arrive in order.
    for p in 0..3 {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|m| m.partition == p)
            .map(|m| m.offset)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: {offsets:?}"
        );
    }
    assert!(!consumer.assignment().unwrap().is_empty());
}

#[test]
fn bad_settings_name_the_key() {
    let mut c = KafkaConfig {
        compression: "brotli".into(),
        ..KafkaConfig::default()
    };
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config key kafka.compression: is \"brotli\"; use one of lz4, zstd, snappy, gzip, none"
    );
    c.compression = "zstd".into();
    c.security_protocol = "sasl_ssl".into();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .starts_with("config key kafka.sasl-mechanism")
    );
    c.sasl_mechanism = Some("SCRAM-SHA-512".into());
    c.sasl_username = Some("u".into());
    c.sasl_password = Some("p".into());
    c.validate().unwrap();
    let p = c.producer_config();
    assert_eq!(p.get("enable.idempotence"), Some("true"));
    assert_eq!(p.get("acks"), Some("all"));
    assert_eq!(p.get("partitioner"), Some("murmur2_random"));
    assert_eq!(p.get("compression.type"), Some("zstd"));
    assert_eq!(
        c.consumer_config().get("partition.assignment.strategy"),
        Some("cooperative-sticky")
    );
    assert_eq!(c.consumer_config().get("enable.auto.commit"), Some("false"));
    assert_eq!(c.consumer_config().get("fetch.max.bytes"), Some("2097152"));
    // librdkafka refuses a fetch limit below the largest message.
    c.fetch_bytes = 65_536;
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "config key kafka.fetch-bytes: is 65536; use at least message.max.bytes (1000000), e.g. 2097152"
    );
    c.properties
        .insert("message.max.bytes".into(), "60000".into());
    c.validate().unwrap();
    assert_eq!(c.consumer_config().get("fetch.max.bytes"), Some("65536"));
    c.fetch_bytes = 50_000;
    assert!(c.validate().unwrap_err().to_string().contains("(60000)"));
}
