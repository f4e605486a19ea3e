//! What the ABI tests share: a minimal hand-written guest module.

/// A minimal proxy-wasm guest: memory, a bump allocator, the ABI version,
/// context creation, plus `body` (more imports and exports).
pub fn guest(imports: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
          {imports}
          (memory (export "memory") 2)
          (global $heap (mut i32) (i32.const 65536))
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
            (local $ptr i32)
            (local.set $ptr (global.get $heap))
            (global.set $heap (i32.add (global.get $heap) (local.get $size)))
            (local.get $ptr))
          (func (export "proxy_on_context_create") (param i32 i32))
          {body}
        )"#
    );
    wat::parse_str(&text).expect("valid wat")
}
