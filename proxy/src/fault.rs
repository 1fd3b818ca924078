//! Test-only fault injection, compiled into debug builds (the integration tests run those)
//! and into release builds with the `fault-injection` feature; absent from normal release
//! builds. Each switch is an environment variable of the pgtier process, never client input.

#[cfg(any(debug_assertions, feature = "fault-injection"))]
mod enabled {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    use crate::runtime::Proxy;

    /// A client Query whose text contains the value of `PGTIER_TEST_PANIC` panics in the relay
    /// after it reached the server (its server is then mid-transaction).
    pub(crate) fn panic_point(sent: &[u8]) {
        static MARK: OnceLock<Option<Vec<u8>>> = OnceLock::new();
        let mark = MARK.get_or_init(|| {
            std::env::var_os("PGTIER_TEST_PANIC")
                .map(|v| v.into_encoded_bytes())
                .filter(|v| !v.is_empty())
        });
        if let Some(mark) = mark {
            if sent.windows(mark.len()).any(|w| w == mark) {
                panic!("test panic (PGTIER_TEST_PANIC)");
            }
        }
    }

    /// With `PGTIER_TEST_RELOAD_IN_ADMIN` set, the first admin command that resolved its
    /// databases reloads the config file right then: a RELOAD landing between the check of a
    /// name and its use, deterministically.
    pub(crate) fn reload_point(proxy: &Proxy) {
        static DONE: AtomicBool = AtomicBool::new(false);
        if std::env::var_os("PGTIER_TEST_RELOAD_IN_ADMIN").is_some()
            && !DONE.swap(true, Ordering::Relaxed)
        {
            let result = proxy.reload();
            tracing::warn!(
                ok = result.is_ok(),
                "test reload point (PGTIER_TEST_RELOAD_IN_ADMIN)"
            );
        }
    }

    /// Whether to keep std's panic hook (to measure what it costs), with
    /// `PGTIER_TEST_DEFAULT_PANIC_HOOK` set.
    pub fn keep_default_hook() -> bool {
        std::env::var_os("PGTIER_TEST_DEFAULT_PANIC_HOOK").is_some()
    }
}

#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
mod enabled {
    use crate::runtime::Proxy;

    /// Absent from normal builds.
    #[inline(always)]
    pub(crate) fn panic_point(_sent: &[u8]) {}

    /// Absent from normal builds.
    #[inline(always)]
    pub(crate) fn reload_point(_proxy: &Proxy) {}

    /// Always false in normal builds.
    pub fn keep_default_hook() -> bool {
        false
    }
}

pub use enabled::keep_default_hook;
pub(crate) use enabled::{panic_point, reload_point};
