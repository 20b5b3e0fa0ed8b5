//! The conformance properties that remove entries, on one server with
//! sweeps in pieces of two entries: a topic's mass expiry then takes many
//! pieces, and a piece that fills up takes its members' other expired
//! connections along (`lua/sweep.lua`).

mod support;

conformance::suite!(@properties support::Redis {
    cluster: false,
    sweep_piece: Some(2),
};
    sweep_removes_strictly_older,
    sweep_all_reports_each_member_once,
    concurrent_sweepers_report_each_entry_once,
    leave_reports_last_for_member,
    leave_member_removes_every_connection,
    disconnect_leaves_every_topic,
    state_machine_matches_model,
    churn_keeps_member_transitions_alternating,
    undecodable_rows_never_stop_removals,
);
