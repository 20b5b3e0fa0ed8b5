//! The whole conformance suite, unchanged, on a three-master Redis Cluster:
//! each store under a key prefix of its own (see `presence_redis::testing`).

mod support;

conformance::suite!(support::Redis {
    cluster: true,
    sweep_piece: None,
});
