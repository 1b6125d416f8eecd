//! `#[offload::kernel]`: mark a plain Rust function as an offload kernel.
//!
//! Use it through the `offload` crate (`#[offload::kernel]`); this crate only holds the
//! procedural macro. The function stays an ordinary Rust function that can be called
//! directly; next to it the macro generates a module of the same name with a typed
//! launcher:
//!
//! ```text
//! #[offload::kernel]
//! pub fn saxpy(i: usize, a: f32, x: &[f32], #[split(1)] y: &mut [f32]) {
//!     y[0] += a * x[i];
//! }
//! // saxpy(i, a, &x, &mut y[i..i + 1]) still works; and:
//! saxpy::launch(&cluster, n, 2.0, &x, &mut y)?;
//! ```
//!
//! The generated module `saxpy` holds `SIGNATURE` (the manifest signature), `kernel()`
//! (the kernel of the package embedded by `offload-build`), `launch`, `launch_with`
//! (explicit kernel and options) and `launch_async`. See `offload-macros-core` for the
//! mapping of parameters to the kernel model and `docs/macros.md` for the whole design.
//!
//! The package is embedded when the crate's build script ran
//! `offload_build::package(...)`: the macro then finds `$OUT_DIR/offload_kernels.okp`
//! at expansion time and emits `include_bytes!` of it. Without it, `kernel()` returns
//! `LaunchError::NotEmbedded`, which names the missing build step, and `launch_with`
//! still works with a kernel loaded some other way.

use offload_macros_core::{
    analyze, parse_kind, strip_param_attrs, ArgSource, KernelFn, ParamKind, SliceRole,
};
use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::ItemFn;

/// The file name `offload-build` writes into `OUT_DIR`.
const EMBEDDED_FILE: &str = "offload_kernels.okp";

/// Marks a function as an offload kernel. `#[offload::kernel]` for an item kernel
/// `fn(i: usize, ...)`, `#[offload::kernel(range)]` for a range kernel
/// `fn(start: usize, end: usize, ...)`. Parameters: scalars (`i32 u32 i64 u64 f32 f64
/// usize`), `&[T]` (whole input), `#[split(k)] &[T]`, `#[split(k)] &mut [T]`,
/// `#[out(k)] &mut [T]` and `#[sum(n)] &mut [T]`, with `T` one of `u8 i32 u32 i64 u64 f32
/// f64`.
#[proc_macro_attribute]
pub fn kernel(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut function = match syn::parse::<ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[offload::kernel]` applies to a plain function (`fn name(i: usize, ...)`); closures, methods and other items cannot be kernels",
            )
            .to_compile_error();
            let item = proc_macro2::TokenStream::from(item);
            return quote!(#error #item).into();
        }
    };
    let analysed = parse_kind(attr.into()).and_then(|kind| analyze(kind, &function));
    strip_param_attrs(&mut function);
    match analysed {
        Ok(kernel) => {
            let launcher = launcher(&kernel);
            quote!(#function #launcher).into()
        }
        // Keep the function so that its callers do not drown the real error in others.
        Err(e) => {
            let error = e.to_compile_error();
            quote!(#error #function).into()
        }
    }
}

/// `include_bytes!` of the embedded package if the build script wrote it, else `missing()`.
fn embedded_package() -> proc_macro2::TokenStream {
    let path = std::env::var_os("OUT_DIR").map(|d| std::path::PathBuf::from(d).join(EMBEDDED_FILE));
    match path
        .filter(|p| p.is_file())
        .and_then(|p| p.to_str().map(str::to_string))
    {
        Some(p) => quote!(::offload::EmbeddedPackage::new(include_bytes!(#p))),
        None => quote!(::offload::EmbeddedPackage::missing()),
    }
}

fn launcher(kernel: &KernelFn) -> proc_macro2::TokenStream {
    let name = &kernel.name;
    let name_str = name.to_string();
    let vis = &kernel.vis;
    let signature = kernel.signature();
    let index_ty = kernel.index.tokens();
    let params: Vec<_> = kernel
        .params
        .iter()
        .map(|p| {
            let (n, t) = (&p.name, &p.ty);
            quote!(#n: #t)
        })
        .collect();
    let names: Vec<_> = kernel.params.iter().map(|p| &p.name).collect();
    let args: Vec<_> = kernel
        .manifest_args()
        .iter()
        .map(|a| match a.source {
            ArgSource::Param(n) => {
                let p = &kernel.params[n];
                let pname = &p.name;
                match p.kind {
                    ParamKind::Scalar(scalar) if scalar.usize => {
                        quote!(::offload::KernelArg::scalar(#pname as u64))
                    }
                    ParamKind::Scalar(_) => quote!(::offload::KernelArg::scalar(#pname)),
                    ParamKind::Slice { role, .. } => match role {
                        SliceRole::Whole | SliceRole::SplitIn(_) => {
                            quote!(::offload::KernelArg::input(#pname))
                        }
                        SliceRole::SplitInOut(_) => quote!(::offload::KernelArg::inout(#pname)),
                        SliceRole::Out(_) => quote!(::offload::KernelArg::output(#pname)),
                        SliceRole::Sum(_) => quote!(::offload::KernelArg::sum(#pname)),
                    },
                }
            }
            ArgSource::LenOf(n) => {
                let pname = &kernel.params[n].name;
                quote!(::offload::KernelArg::scalar(#pname.len() as u64))
            }
        })
        .collect();
    let embedded = embedded_package();
    let module_doc = format!(
        " Launcher of the offload kernel [`{name_str}`](fn@super::{name_str}): `{signature}`."
    );
    let package_static = format_ident!("PACKAGE");
    quote! {
        #[doc = #module_doc]
        #[allow(clippy::too_many_arguments)]
        #vis mod #name {
            /// The kernel's signature in the manifest; a package whose kernel differs is
            /// refused (it was built from other source).
            pub const SIGNATURE: &str = #signature;

            static #package_static: ::offload::EmbeddedPackage = #embedded;

            /// The kernel in the package that `offload-build` embedded in this crate.
            pub fn kernel() -> ::core::result::Result<::offload::Kernel, ::offload::LaunchError> {
                ::offload::Kernel::embedded(&#package_static, #name_str, SIGNATURE)
            }

            /// Runs the kernel over `items` on `cluster` with default options; results are
            /// written into the `&mut` slices.
            pub fn launch(
                cluster: &::offload::Cluster,
                items: #index_ty,
                #(#params),*
            ) -> ::core::result::Result<::offload::Report, ::offload::LaunchError> {
                launch_with(cluster, &kernel()?, &::offload::Options::default(), items, #(#names),*)
            }

            /// Runs `kernel` (this kernel, from any package) over `items` on `cluster`.
            pub fn launch_with(
                cluster: &::offload::Cluster,
                kernel: &::offload::Kernel,
                options: &::offload::Options,
                items: #index_ty,
                #(#params),*
            ) -> ::core::result::Result<::offload::Report, ::offload::LaunchError> {
                cluster.launch(kernel, items as u64, &mut [#(#args),*], options)
            }

            /// Like [`launch`], without blocking the async runtime: the job runs on
            /// tokio's blocking pool.
            pub async fn launch_async(
                cluster: &::offload::Cluster,
                items: #index_ty,
                #(#params),*
            ) -> ::core::result::Result<::offload::Report, ::offload::LaunchError> {
                cluster
                    .launch_async(&kernel()?, items as u64, &mut [#(#args),*], &::offload::Options::default())
                    .await
            }
        }
    }
}
