//! The matcher alone: N requests of a 2-player mode (two groups of one) grouped into matches,
//! from an empty matchmaker, client ids made beforehand. Targets (issue 6): 10,000 requests in
//! at most 50 ms, 100,000 in at most 500 ms. Run with
//! `cargo bench -p rally-platform --bench matchmaker`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rally_platform::matchmaker::{GroupRules, Matchmaker, ModeRules, Placement};
use std::hint::black_box;
use std::sync::Arc;

fn duel() -> ModeRules {
    let group = |name: &str| GroupRules {
        name: name.to_owned(),
        min_players: 1,
        max_players: 1,
    };
    ModeRules {
        name: "duel".to_owned(),
        min_players: 2,
        max_players: 2,
        groups: vec![group("red"), group("blue")],
    }
}

/// A battle mode with backfill: 2 to 8 players in two teams of up to 4.
fn squads() -> ModeRules {
    let group = |name: &str| GroupRules {
        name: name.to_owned(),
        min_players: 1,
        max_players: 4,
    };
    ModeRules {
        name: "squads".to_owned(),
        min_players: 2,
        max_players: 8,
        groups: vec![group("a"), group("b")],
    }
}

fn group_all(mode: &ModeRules, clients: Vec<Arc<str>>) -> usize {
    let mut matchmaker = Matchmaker::new(vec![mode.clone()]);
    clients
        .into_iter()
        .filter(|client| {
            matches!(
                matchmaker.request(client.clone(), &mode.name),
                Ok(Placement::Formed { .. })
            )
        })
        .count()
}

fn matcher(c: &mut Criterion) {
    for (mode, sizes) in [(duel(), [10_000, 100_000]), (squads(), [10_000, 100_000])] {
        let mut group = c.benchmark_group(format!("matchmaker/{}", mode.name));
        group.sample_size(20);
        for size in sizes {
            group.throughput(Throughput::Elements(size as u64));
            group.bench_function(format!("{size} requests"), |b| {
                b.iter_batched(
                    || {
                        (0..size)
                            .map(|n| Arc::from(format!("client-{n}")))
                            .collect()
                    },
                    |clients| black_box(group_all(&mode, clients)),
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, matcher);
criterion_main!(benches);
