// Link-time facts that Cargo.toml cannot express.
fn main() {
    // A versioned soname, as shared libraries on Linux carry; `make install`
    // creates the libo2dlm.so.1 and libo2dlm.so links to the real file.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libo2dlm.so.1");
    // The com_err table registers itself on libcom_err's `_et_list`, so the
    // library needs libcom_err at run time. Link the runtime soname directly
    // so building does not need the -dev package.
    println!("cargo:rustc-link-arg=-l:libcom_err.so.2");
    println!("cargo:rerun-if-changed=build.rs");
}
