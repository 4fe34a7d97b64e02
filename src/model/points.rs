//! OTLP metric and data point builders shared by the telemetry metrics (metrics.rs) and
//! pyusdt's own (src/report/own.rs).
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point::Value, AggregationTemporality, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, Sum,
};

use super::metrics::Temporality;

fn temporality_code(t: Temporality) -> i32 {
    match t {
        Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
        Temporality::Delta => AggregationTemporality::Delta as i32,
    }
}

pub fn int_point(attributes: Vec<KeyValue>, value: i64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(Value::AsInt(value)),
        ..Default::default()
    }
}

pub fn double_point(
    attributes: Vec<KeyValue>,
    value: f64,
    start: u64,
    now: u64,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(Value::AsDouble(value)),
        ..Default::default()
    }
}

pub fn counter(
    name: &str,
    description: &str,
    unit: &str,
    t: Temporality,
    data_points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(Data::Sum(Sum {
            data_points,
            aggregation_temporality: temporality_code(t),
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

pub fn gauge(
    name: &str,
    description: &str,
    unit: &str,
    data_points: Vec<NumberDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(Data::Gauge(Gauge { data_points })),
        ..Default::default()
    }
}

pub(super) fn histogram(
    name: &str,
    description: &str,
    t: Temporality,
    data_points: Vec<HistogramDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: "s".into(),
        data: Some(Data::Histogram(Histogram {
            data_points,
            aggregation_temporality: temporality_code(t),
        })),
        ..Default::default()
    }
}
