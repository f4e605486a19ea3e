//! The floor of any routing proxy-wasm filter, for `bench-envoy`: per
//! request, set the routing header to a fixed cluster and ask Envoy to match
//! the route again. No policy, no attribute reads.
//!
//! `cargo build -p header-only --target wasm32-wasip1 --release`

/// The cluster every request is sent to.
pub const CLUSTER: &str = "cluster-0";
/// The header Envoy's `cluster_header` route reads.
pub const ROUTING_HEADER: &str = "x-celroute-cluster";

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::Action;

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(SetHeader) });
    }}

    struct SetHeader;

    impl Context for SetHeader {}

    impl HttpContext for SetHeader {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            self.set_http_request_header(super::ROUTING_HEADER, Some(super::CLUSTER));
            let _ = hostcalls::call_foreign_function("clear_route_cache", None);
            Action::Continue
        }
    }
}
