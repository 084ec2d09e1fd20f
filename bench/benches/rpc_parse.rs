//! Client JSON-RPC request parsing: simd-json as the engine does it
//! (`RpcParser` with reused buffers, down to a typed `Op` whose
//! `data` is kept as compact bytes) against serde_json, 64 B … 4 KiB.
//!
//! Every client request is parsed once; at a few hundred thousand requests
//! a second per core the parser is a visible share of a shard's time. The
//! serde_json side is measured two ways: into `serde_json::Value` (what a
//! quick server does) and into a typed struct with `data` as a `RawValue`
//! (the best a careful serde_json server can do).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::protocol::rpc::{Incoming, RpcParser};
use ringcast::pubsub::ops::Op;
use ringcast_bench::payload::send_data_request;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Request<'a> {
    #[allow(dead_code)]
    jsonrpc: &'a str,
    #[allow(dead_code)]
    id: Option<u64>,
    method: &'a str,
    #[serde(borrow)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    channel: &'a str,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn requests() -> Vec<(String, String)> {
    let subscribe = r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"channel":"c"}}"#;
    let mut out = vec![(
        format!("subscribe_{}B", subscribe.len()),
        subscribe.to_owned(),
    )];
    for size in [256usize, 1024, 4096] {
        let req = send_data_request(size);
        out.push((format!("send_data_{}B", req.len()), req));
    }
    out
}

fn rpc_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("rpc_parse");
    for (label, req) in requests() {
        let bytes = req.as_bytes();
        g.throughput(Throughput::Bytes(bytes.len() as u64));

        let mut parser = RpcParser::new();
        match parser.parse::<Op>(bytes) {
            Ok(Incoming::Single(call)) => {
                assert!(call.method.is_ok(), "{label}: {:?}", call.method)
            }
            other => panic!("{label}: {other:?}"),
        }
        g.bench_with_input(
            BenchmarkId::new("simd_json_engine", &label),
            bytes,
            |b, bytes| b.iter(|| parser.parse::<Op>(black_box(bytes)).unwrap()),
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json_value", &label),
            bytes,
            |b, bytes| {
                b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(bytes)).unwrap())
            },
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json_typed_raw", &label),
            bytes,
            |b, bytes| {
                b.iter(|| {
                    let r: Request<'_> = serde_json::from_slice(black_box(bytes)).unwrap();
                    let p = r.params.unwrap();
                    black_box((r.method, p.channel, p.data.map(|d| d.get().len())))
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, rpc_parse);
criterion_main!(benches);
