//! The Lua scripts, compiled in. Writing scripts start with `lua/value.lua`
//! and `lua/lib.lua`; the scripts reading entries with a `no-writes` flags
//! line, `lua/value.lua` and `lua/entries.lua`.

use std::sync::LazyLock;

use redis::Script;

macro_rules! with_lib {
    ($file:literal) => {
        concat!(
            include_str!("../lua/value.lua"),
            include_str!("../lua/lib.lua"),
            include_str!($file)
        )
    };
}

macro_rules! reading_entries {
    ($file:literal) => {
        concat!(
            "#!lua flags=no-writes\n",
            include_str!("../lua/value.lua"),
            include_str!("../lua/entries.lua"),
            include_str!($file)
        )
    };
}

pub(crate) struct Scripts {
    pub(crate) join: Script,
    pub(crate) update: Script,
    pub(crate) leave: Script,
    pub(crate) leave_member: Script,
    pub(crate) sweep: Script,
    pub(crate) members: Script,
    pub(crate) member: Script,
    pub(crate) count: Script,
    pub(crate) due: Script,
    pub(crate) index: Script,
    pub(crate) unindex: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    join: Script::new(concat!(
        // Its calls on a cluster reach every slot of a node (see join.lua).
        "#!lua flags=allow-cross-slot-keys\n",
        with_lib!("../lua/join.lua")
    )),
    update: Script::new(with_lib!("../lua/update.lua")),
    leave: Script::new(with_lib!("../lua/leave.lua")),
    leave_member: Script::new(with_lib!("../lua/leave_member.lua")),
    sweep: Script::new(with_lib!("../lua/sweep.lua")),
    members: Script::new(reading_entries!("../lua/members.lua")),
    member: Script::new(reading_entries!("../lua/member.lua")),
    count: Script::new(include_str!("../lua/count.lua")),
    due: Script::new(include_str!("../lua/due.lua")),
    index: Script::new(include_str!("../lua/index.lua")),
    unindex: Script::new(include_str!("../lua/unindex.lua")),
});

impl Scripts {
    /// Every script, to load them all at connect.
    pub(crate) fn all(&self) -> [&Script; 11] {
        [
            &self.join,
            &self.update,
            &self.leave,
            &self.leave_member,
            &self.sweep,
            &self.members,
            &self.member,
            &self.count,
            &self.due,
            &self.index,
            &self.unindex,
        ]
    }
}
