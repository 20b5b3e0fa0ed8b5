//! The whole conformance suite, unchanged, on one Redis server: each store
//! under a key prefix of its own (see `presence_redis::testing`).

mod support;

conformance::suite!(support::Redis {
    cluster: false,
    sweep_piece: None,
});
