//! Write coalescing: 1 … 64 queued 100-byte frames written as one copy into
//! a `Vec` + `write`, as one `writev` over an iovec array, or (the baseline
//! being avoided) one `write` per frame.
//!
//! A subscriber in a busy channel has several frames queued when its shard
//! gets to it; how they leave decides the syscalls (or io_uring SQEs) per
//! delivery. The `build_only` rows are the userspace cost alone; the
//! `devnull` rows add a real syscall with no transport work; the
//! `socketpair` rows go through a real AF_UNIX stream socket (drained after
//! each write, the same read for every variant).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::hint::black_box;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_bench::sys::{drain, iovec, socketpair, write, writev};

const BATCHES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
const FRAME_LEN: usize = 100;

fn queued(n: usize) -> VecDeque<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![i as u8; FRAME_LEN]))
        .collect()
}

fn copy_into(buf: &mut Vec<u8>, frames: &VecDeque<Bytes>) {
    buf.clear();
    for f in frames {
        buf.extend_from_slice(f);
    }
}

fn iovecs(iov: &mut Vec<libc::iovec>, frames: &VecDeque<Bytes>) {
    iov.clear();
    iov.extend(frames.iter().map(|f| iovec(f)));
}

/// Writes the frames to `fd` in `how` fashion; `after` runs after each
/// write (drains the socket peer).
fn bench_target(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    target: &str,
    fd: &impl AsRawFd,
    mut after: impl FnMut(),
) {
    for n in BATCHES {
        let frames = queued(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut buf = Vec::with_capacity(64 * FRAME_LEN);
        g.bench_with_input(
            BenchmarkId::new(format!("{target}/copy_vec_write"), n),
            &n,
            |b, _| {
                b.iter(|| {
                    copy_into(&mut buf, &frames);
                    let w = write(fd, &buf).unwrap();
                    after();
                    w
                })
            },
        );
        let mut iov = Vec::with_capacity(64);
        g.bench_with_input(
            BenchmarkId::new(format!("{target}/writev"), n),
            &n,
            |b, _| {
                b.iter(|| {
                    iovecs(&mut iov, &frames);
                    let w = writev(fd, &iov).unwrap();
                    after();
                    w
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new(format!("{target}/write_per_frame"), n),
            &n,
            |b, _| {
                b.iter(|| {
                    let mut w = 0;
                    for f in &frames {
                        w += write(fd, f).unwrap();
                    }
                    after();
                    w
                })
            },
        );
    }
}

fn write_coalescing(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_coalescing");
    for n in BATCHES {
        let frames = queued(n);
        g.throughput(Throughput::Elements(n as u64));
        let mut buf = Vec::with_capacity(64 * FRAME_LEN);
        g.bench_with_input(BenchmarkId::new("build_only/copy_vec", n), &n, |b, _| {
            b.iter(|| {
                copy_into(&mut buf, black_box(&frames));
                buf.len()
            })
        });
        let mut iov = Vec::with_capacity(64);
        g.bench_with_input(BenchmarkId::new("build_only/iovec", n), &n, |b, _| {
            b.iter(|| {
                iovecs(&mut iov, black_box(&frames));
                iov.len()
            })
        });
    }

    let devnull = OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    bench_target(&mut g, "devnull", &devnull, || {});

    let (tx, rx) = socketpair().expect("socketpair");
    let mut scratch = vec![0u8; 64 * 1024];
    bench_target(&mut g, "socketpair", &tx, || {
        black_box(drain(&rx, &mut scratch));
    });
    g.finish();
}

criterion_group!(benches, write_coalescing);
criterion_main!(benches);
