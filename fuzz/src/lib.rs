//! Fuzzing harnesses for viaduct's virtio queue handling and its API request parsing. The
//! device models are compiled from the binary's own source files (`#[path]` below), with what
//! they take from the rest of the binary defined here: the guest memory type (identical), the
//! thread spawner (without the binary's panic reporting and seccomp filters) and the seccomp
//! types the models name (their rules are collected, never installed). The harnesses
//! (harness/queues.rs, harness/api_request.rs) are shared with the seed replay tests in
//! `cargo test -p viaduct`; tools/test checks that this crate builds, so a new dependency of
//! the models shows up there.

#![allow(dead_code)]

pub mod vstate {
    pub mod memory {
        pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
    }
}

pub mod seccomp {
    /// src/seccomp's thread kinds the device models choose from.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ThreadKind {
        VirtioBlock,
        VirtioNet,
        VirtioRng,
    }

    /// src/seccomp's rule set, as far as the models use it.
    #[derive(Default)]
    pub struct Rules(Vec<libc::c_long>);

    impl Rules {
        pub fn allow(&mut self, syscalls: &[libc::c_long]) -> &mut Self {
            self.0.extend_from_slice(syscalls);
            self
        }
    }
}

pub mod threads {
    /// src/threads.rs's `spawn`: a named thread (no filter is installed).
    pub fn spawn<F, T>(
        _kind: super::seccomp::ThreadKind,
        name: impl Into<String>,
        f: F,
    ) -> std::io::Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        std::thread::Builder::new().name(name.into()).spawn(f)
    }
}

#[path = "../../src/devices/virtio/mod.rs"]
pub mod virtio;

/// The API's HTTP framing and JSON bodies (src/api/http.rs, types.rs: std, httparse and serde
/// only), and the harness of the `api_request` target.
#[path = "../../src/api/http.rs"]
pub mod api_http;
#[path = "../../src/api/types.rs"]
pub mod api_types;

pub mod api {
    pub use super::api_http as http;
    pub use super::api_types as types;

    pub mod harness {
        include!("../harness/api_request.rs");
    }
}

use vstate::memory::GuestMemory;

include!("../harness/queues.rs");
