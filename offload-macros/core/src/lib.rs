//! The kernel signature model shared by `#[offload::kernel]` (offload-macros) and the
//! build-script helper (offload-build).
//!
//! Both sides must agree, argument for argument, on how a Rust signature such as
//! `fn saxpy(i: usize, a: f32, x: &[f32], #[split(1)] y: &mut [f32])` maps onto the kernel
//! model: the macro turns it into a typed launcher, the build helper into a manifest and a
//! `#[no_mangle] extern "C"` shim. Keeping the analysis in one crate with no LLVM and no
//! proc-macro dependency is what guarantees that agreement (a proc-macro crate cannot
//! export it, and the build helper links LLVM, which must never be loaded into rustc).
//!
//! # The mapping
//!
//! | Rust parameter | manifest | what the function receives |
//! |---|---|---|
//! | first `i: usize` or `u64` (item kernel) | index | the global item index |
//! | first `start, end: usize` or `u64` (`#[offload::kernel(range)]`) | index | the packet's items |
//! | `a: f32` (`i32 u32 i64 u64 f32 f64 usize`) | `a: f32` (`usize` is `u64`) | the value |
//! | `x: &[T]` | `x: in T[]` + `x_len: u64` | the whole buffer, global indices |
//! | `#[split(k)] x: &[T]` | `x: in T[k]` | the item's `k` elements (range: `k*(end-start)`) |
//! | `#[split(k)] y: &mut [T]` | `y: inout T[k]` | the item's `k` elements, read-write |
//! | `#[out(k)] y: &mut [T]` | `y: out T[k]` | the item's `k` elements, write-only (zero on entry) |
//! | `#[sum(n)] h: &mut [T]` | `h: sum T[n]` | a private `n`-element accumulator (zero on entry) |
//!
//! `T` is one of `u8 i32 u32 i64 u64 f32 f64`. Split slices are *windows*: element 0 of
//! the slice is element `k*i` of the buffer (range kernels: `k*start`), so packets running
//! in parallel never hold overlapping `&mut` slices. Whole `&[T]` buffers are indexed
//! globally.

use std::fmt;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, Pat, Type, Visibility};

/// Names of the attributes on parameters that the macro and the build helper consume.
pub const PARAM_ATTRIBUTES: [&str; 3] = ["split", "out", "sum"];

/// What the allowed parameter types are, for error messages.
const ALLOWED: &str = "allowed parameters: scalars (i32 u32 i64 u64 f32 f64 usize), `&[T]` (whole input), `#[split(k)] &[T]` (per-item input), `#[split(k)] &mut [T]` (per-item read-write), `#[out(k)] &mut [T]` (per-item output), `#[sum(n)] &mut [T]` (n-element accumulator), with T one of u8 i32 u32 i64 u64 f32 f64";

pub use kernel_model::{KernelKind, ScalarType};

/// The Rust type of the index parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexType {
    /// `usize`.
    Usize,
    /// `u64`.
    U64,
}

impl IndexType {
    /// The Rust type.
    pub fn tokens(self) -> TokenStream {
        match self {
            IndexType::Usize => quote!(usize),
            IndexType::U64 => quote!(u64),
        }
    }
}

/// A scalar parameter's type: the kernel model's, and whether Rust spells it `usize`
/// (which the kernel ABI passes as `u64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalarParam {
    /// The kernel-model type (`u64` for `usize`).
    pub ty: ScalarType,
    /// Written `usize` in Rust.
    pub usize: bool,
}

impl ScalarParam {
    fn parse(name: &str) -> Option<ScalarParam> {
        if name == "usize" {
            return Some(ScalarParam {
                ty: ScalarType::U64,
                usize: true,
            });
        }
        ScalarType::parse(name)
            .filter(|t| t.is_scalar_arg())
            .map(|ty| ScalarParam { ty, usize: false })
    }
}

/// How a slice parameter maps onto a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceRole {
    /// `&[T]`: the whole `in` buffer, plus a hidden length argument.
    Whole,
    /// `#[split(k)] &[T]`: `in T[k]`.
    SplitIn(u64),
    /// `#[split(k)] &mut [T]`: `inout T[k]`.
    SplitInOut(u64),
    /// `#[out(k)] &mut [T]`: `out T[k]`.
    Out(u64),
    /// `#[sum(n)] &mut [T]`: `sum T[n]`.
    Sum(u64),
}

/// A parameter after the index parameters.
#[derive(Clone, Debug)]
pub enum ParamKind {
    /// A scalar by value.
    Scalar(ScalarParam),
    /// A slice.
    Slice {
        /// Element type.
        elem: ScalarType,
        /// Its buffer mapping.
        role: SliceRole,
    },
}

/// One parameter after the index parameters.
#[derive(Clone, Debug)]
pub struct Param {
    /// Its name.
    pub name: Ident,
    /// Its Rust type as written (without the parameter attributes).
    pub ty: Type,
    /// What it maps to.
    pub kind: ParamKind,
}

/// Where the value of one manifest argument comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgSource {
    /// Parameter `n` (a scalar or a slice).
    Param(usize),
    /// The length of the whole-buffer slice parameter `n`.
    LenOf(usize),
}

/// One manifest argument of a kernel, in order.
#[derive(Clone, Debug)]
pub struct ManifestArg {
    /// The argument name.
    pub name: String,
    /// Its manifest spelling, e.g. `x: in f32[]`.
    pub spec: String,
    /// Where its value comes from.
    pub source: ArgSource,
}

/// A validated kernel function.
#[derive(Clone, Debug)]
pub struct KernelFn {
    /// The function (and kernel symbol) name.
    pub name: Ident,
    /// The function's visibility.
    pub vis: Visibility,
    /// Item or range.
    pub kind: KernelKind,
    /// Rust type of the index parameters.
    pub index: IndexType,
    /// Parameters after the index parameters.
    pub params: Vec<Param>,
}

/// Parses the attribute's own arguments: empty (item kernel) or `range`.
pub fn parse_kind(attr: TokenStream) -> syn::Result<KernelKind> {
    if attr.is_empty() {
        return Ok(KernelKind::Item);
    }
    let ident: Ident = syn::parse2(attr.clone()).map_err(|_| {
        syn::Error::new(
            attr.span(),
            "expected `#[offload::kernel]` (item kernel) or `#[offload::kernel(range)]`",
        )
    })?;
    if ident == "range" {
        Ok(KernelKind::Range)
    } else if ident == "item" {
        Ok(KernelKind::Item)
    } else {
        Err(syn::Error::new(
            ident.span(),
            format!("unknown kernel kind `{ident}`: expected `#[offload::kernel]` (item kernel) or `#[offload::kernel(range)]`"),
        ))
    }
}

/// Whether `attr` is `#[offload::kernel]`, `#[offload::kernel(...)]` or `#[kernel]`.
pub fn is_kernel_attribute(attr: &syn::Attribute) -> bool {
    let path = attr.path();
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    matches!(
        segments
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["offload", "kernel"] | ["kernel"] | ["offload_macros", "kernel"]
    )
}

/// Errors collected while analysing a function: all are reported, not just the first.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    /// An error spanning all of `tokens` (a bare `span()` covers only the first token on
    /// stable Rust).
    fn push(&mut self, tokens: &dyn quote::ToTokens, message: impl fmt::Display) {
        self.add(syn::Error::new_spanned(tokens, message));
    }

    fn add(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(e) => e.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }
}

/// Checks `function` against the kernel rules and maps its parameters.
pub fn analyze(kind: KernelKind, function: &ItemFn) -> syn::Result<KernelFn> {
    let mut errors = Errors::default();
    let sig = &function.sig;
    let name = &sig.ident;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            &sig.generics,
            format!("kernel `{name}` cannot be generic: a kernel is compiled once to a fixed machine signature; write one kernel per element type"),
        );
        // Its parameter types are the type parameters: more errors would be noise.
        return errors.finish(KernelFn {
            name: name.clone(),
            vis: function.vis.clone(),
            kind,
            index: IndexType::Usize,
            params: Vec::new(),
        });
    }
    if let Some(t) = &sig.asyncness {
        errors.push(&t, "a kernel cannot be `async`");
    }
    if let Some(t) = &sig.constness {
        errors.push(&t, "a kernel cannot be `const fn`");
    }
    if let Some(t) = &sig.unsafety {
        errors.push(&t, "a kernel cannot be `unsafe fn`: its launcher checks every slice, so the function must be safe to call");
    }
    if let Some(abi) = &sig.abi {
        errors.push(&abi, "a kernel is a plain Rust function: drop the `extern` ABI (the build generates the C-ABI shim)");
    }
    if let Some(v) = &sig.variadic {
        errors.push(&v, "a kernel cannot be variadic");
    }
    if let syn::ReturnType::Type(_, ty) = &sig.output {
        errors.push(
            &ty,
            "a kernel returns nothing: write its results into `&mut [T]` parameters (`#[split(k)]`, `#[out(k)]` or `#[sum(n)]`)",
        );
    }
    let index_count = match kind {
        KernelKind::Item => 1,
        KernelKind::Range => 2,
    };
    let index_help = match kind {
        KernelKind::Item => "an item kernel starts with the item index, `i: usize` (or `u64`)",
        KernelKind::Range => "a range kernel starts with `start: usize, end: usize` (or `u64`)",
    };
    let mut index = None;
    let mut params = Vec::new();
    for (position, input) in sig.inputs.iter().enumerate() {
        let typed = match input {
            FnArg::Receiver(r) => {
                errors.push(
                    &r,
                    format!("kernel `{name}` cannot take `self`: a kernel runs on other machines and can capture no state; pass what it needs as parameters ({ALLOWED})"),
                );
                continue;
            }
            FnArg::Typed(t) => t,
        };
        let param_name = match &*typed.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                errors.push(
                    &other,
                    "kernel parameters must be plain names (no patterns)",
                );
                continue;
            }
        };
        let attrs = match parse_param_attrs(&typed.attrs) {
            Ok(a) => a,
            Err(e) => {
                errors.add(e);
                continue;
            }
        };
        if position < index_count {
            match index_type(&typed.ty) {
                Some(t) if attrs.is_none() => {
                    if index.is_some_and(|prev| prev != t) {
                        errors.push(&typed.ty, "`start` and `end` must have the same type");
                    }
                    index = Some(t);
                }
                Some(_) => errors.push(&typed, "index parameters take no attributes"),
                None => errors.push(
                    &typed.ty,
                    format!("{index_help}, found `{}`", type_text(&typed.ty)),
                ),
            }
            continue;
        }
        match param_kind(&typed.ty, attrs) {
            Ok(kind) => params.push(Param {
                name: param_name,
                ty: (*typed.ty).clone(),
                kind,
            }),
            Err(e) => errors.add(e),
        }
    }
    if sig.inputs.len() < index_count {
        errors.push(&sig.ident, index_help);
    }
    check_names(&params, &mut errors);
    let kernel = KernelFn {
        name: name.clone(),
        vis: function.vis.clone(),
        kind,
        index: index.unwrap_or(IndexType::Usize),
        params,
    };
    errors.finish(kernel)
}

/// Launcher parameter names a kernel parameter may not reuse.
const RESERVED: [&str; 4] = ["cluster", "items", "kernel", "options"];

fn check_names(params: &[Param], errors: &mut Errors) {
    for p in params {
        let name = p.name.to_string();
        if RESERVED.contains(&name.as_str()) {
            errors.push(
                &p.name,
                format!("parameter name `{name}` is taken by the generated launcher (`launch(cluster, items, ...)`); rename it"),
            );
        }
        if let ParamKind::Slice {
            role: SliceRole::Whole,
            ..
        } = p.kind
        {
            let hidden = format!("{name}_len");
            if params.iter().any(|q| q.name == hidden) {
                errors.push(
                    &p.name,
                    format!("parameter `{hidden}` collides with the hidden length argument of the whole buffer `{name}`; rename it"),
                );
            }
        }
    }
}

/// A parameter's `#[split(k)]`, `#[out(k)]` or `#[sum(n)]`, with the attribute for errors.
enum ParamAttr {
    Split(u64, syn::Attribute),
    Out(u64, syn::Attribute),
    Sum(u64, syn::Attribute),
}

fn parse_param_attrs(attrs: &[syn::Attribute]) -> syn::Result<Option<ParamAttr>> {
    let mut found: Option<ParamAttr> = None;
    for attr in attrs {
        let which = attr
            .path()
            .get_ident()
            .map(|i| i.to_string())
            .filter(|w| PARAM_ATTRIBUTES.contains(&w.as_str()))
            .ok_or_else(|| {
                syn::Error::new_spanned(
                    attr,
                    "unknown parameter attribute; kernels accept `#[split(k)]`, `#[out(k)]` and `#[sum(n)]`",
                )
            })?;
        let count: syn::LitInt = attr.parse_args().map_err(|_| {
            syn::Error::new_spanned(
                attr,
                format!("`#[{which}]` needs an element count, e.g. `#[{which}(1)]`"),
            )
        })?;
        let n: u64 = count.base10_parse()?;
        if n == 0 {
            return Err(syn::Error::new_spanned(
                attr,
                format!("`#[{which}(0)]` is empty: the count must be at least 1"),
            ));
        }
        if found.is_some() {
            return Err(syn::Error::new_spanned(
                attr,
                "a parameter takes at most one of `#[split(k)]`, `#[out(k)]`, `#[sum(n)]`",
            ));
        }
        let attr = attr.clone();
        found = Some(match which.as_str() {
            "split" => ParamAttr::Split(n, attr),
            "out" => ParamAttr::Out(n, attr),
            _ => ParamAttr::Sum(n, attr),
        });
    }
    Ok(found)
}

fn index_type(ty: &Type) -> Option<IndexType> {
    match path_name(ty)?.as_str() {
        "usize" => Some(IndexType::Usize),
        "u64" => Some(IndexType::U64),
        _ => None,
    }
}

fn path_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.get_ident().map(|i| i.to_string()),
        Type::Group(g) => path_name(&g.elem),
        Type::Paren(p) => path_name(&p.elem),
        _ => None,
    }
}

fn type_text(ty: &Type) -> String {
    quote!(#ty)
        .to_string()
        .replace(" ", "")
        .replace("&mut", "&mut ")
}

fn param_kind(ty: &Type, attr: Option<ParamAttr>) -> syn::Result<ParamKind> {
    if let Some(scalar) = path_name(ty).as_deref().and_then(ScalarParam::parse) {
        return match attr {
            None => Ok(ParamKind::Scalar(scalar)),
            Some(ParamAttr::Split(_, a) | ParamAttr::Out(_, a) | ParamAttr::Sum(_, a)) => {
                Err(syn::Error::new_spanned(
                    a,
                    "`#[split]`, `#[out]` and `#[sum]` apply to slices only",
                ))
            }
        };
    }
    let unsupported = || {
        syn::Error::new_spanned(
            ty,
            format!(
                "unsupported kernel parameter type `{}`; {ALLOWED}",
                type_text(ty)
            ),
        )
    };
    let Type::Reference(reference) = ty else {
        return Err(unsupported());
    };
    let Type::Slice(slice) = &*reference.elem else {
        return Err(unsupported());
    };
    let elem = path_name(&slice.elem)
        .as_deref()
        .and_then(ScalarType::parse)
        .ok_or_else(unsupported)?;
    let role = match (reference.mutability.is_some(), attr) {
        (false, None) => SliceRole::Whole,
        (false, Some(ParamAttr::Split(k, _))) => SliceRole::SplitIn(k),
        (false, Some(ParamAttr::Out(_, a) | ParamAttr::Sum(_, a))) => {
            return Err(syn::Error::new_spanned(a, "`#[out]` and `#[sum]` need a `&mut [T]` slice"))
        }
        (true, None) => {
            return Err(syn::Error::new_spanned(
                ty,
                "a `&mut [T]` kernel parameter needs `#[split(k)]` (each item reads and writes its own k elements), `#[out(k)]` (each item writes its own k elements) or `#[sum(n)]` (an n-element accumulator summed over all items): whole-buffer outputs would be written by every packet",
            ))
        }
        (true, Some(ParamAttr::Split(k, _))) => SliceRole::SplitInOut(k),
        (true, Some(ParamAttr::Out(k, _))) => SliceRole::Out(k),
        (true, Some(ParamAttr::Sum(n, _))) => SliceRole::Sum(n),
    };
    Ok(ParamKind::Slice { elem, role })
}

/// Removes the parameter attributes (`#[split]`, `#[out]`, `#[sum]`, and unknown ones,
/// which the analysis has reported already) from `function`, so that it compiles as
/// ordinary Rust. The attributes rustc itself allows on parameters stay.
pub fn strip_param_attrs(function: &mut ItemFn) {
    const RUSTC_PARAM_ATTRIBUTES: [&str; 8] = [
        "cfg", "cfg_attr", "allow", "warn", "deny", "forbid", "expect", "doc",
    ];
    for input in function.sig.inputs.iter_mut() {
        if let FnArg::Typed(t) = input {
            t.attrs.retain(|a| {
                a.path()
                    .get_ident()
                    .is_some_and(|i| RUSTC_PARAM_ATTRIBUTES.contains(&i.to_string().as_str()))
            });
        }
    }
}

impl KernelFn {
    /// The manifest arguments, in order (index parameters excluded).
    pub fn manifest_args(&self) -> Vec<ManifestArg> {
        let mut args = Vec::new();
        for (n, p) in self.params.iter().enumerate() {
            let name = p.name.to_string();
            let spec = match p.kind {
                ParamKind::Scalar(t) => format!("{name}: {}", t.ty.name()),
                ParamKind::Slice { elem, role } => {
                    let e = elem.name();
                    match role {
                        SliceRole::Whole => format!("{name}: in {e}[]"),
                        SliceRole::SplitIn(k) => format!("{name}: in {e}[{k}]"),
                        SliceRole::SplitInOut(k) => format!("{name}: inout {e}[{k}]"),
                        SliceRole::Out(k) => format!("{name}: out {e}[{k}]"),
                        SliceRole::Sum(k) => format!("{name}: sum {e}[{k}]"),
                    }
                }
            };
            args.push(ManifestArg {
                name: name.clone(),
                spec,
                source: ArgSource::Param(n),
            });
            if let ParamKind::Slice {
                role: SliceRole::Whole,
                ..
            } = p.kind
            {
                args.push(ManifestArg {
                    name: format!("{name}_len"),
                    spec: format!("{name}_len: u64 = len({name})"),
                    source: ArgSource::LenOf(n),
                });
            }
        }
        args
    }

    /// The signature as `ir_packager::KernelSpec::signature` spells it, e.g.
    /// `item saxpy(i: u64, a: f32, x: in f32[], x_len: u64 = len(x), y: inout f32[1])`.
    pub fn signature(&self) -> String {
        let index = match self.kind {
            KernelKind::Item => "i: u64".to_string(),
            KernelKind::Range => "start: u64, end: u64".to_string(),
        };
        let args: Vec<String> = std::iter::once(index)
            .chain(self.manifest_args().into_iter().map(|a| a.spec))
            .collect();
        format!("{} {}({})", self.kind.name(), self.name, args.join(", "))
    }

    /// This kernel's `[[kernel]]` table of the manifest TOML.
    pub fn manifest_toml(&self) -> String {
        let args: Vec<String> = self
            .manifest_args()
            .iter()
            .map(|a| format!("\"{}\"", a.spec))
            .collect();
        format!(
            "[[kernel]]\nname = \"{}\"\nkind = \"{}\"\nargs = [{}]\n",
            self.name,
            self.kind.name(),
            args.join(", ")
        )
    }

    /// The `#[no_mangle] extern "C"` shim with the kernel ABI (`u64` index, scalars by
    /// value, one pointer per buffer, `u64` lengths of whole buffers) that turns pointers
    /// into slices and calls the function at `module::name`.
    pub fn shim(&self, module: &Ident) -> TokenStream {
        let name = &self.name;
        let index_cast = |i: &Ident| match self.index {
            IndexType::Usize => quote!(#i as usize),
            IndexType::U64 => quote!(#i),
        };
        let (index_params, index_args, window_start, window_items) = match self.kind {
            KernelKind::Item => {
                let i = format_ident!("i");
                let arg = index_cast(&i);
                (
                    quote!(i: u64),
                    quote!(#arg),
                    quote!(i as usize),
                    quote!(1usize),
                )
            }
            KernelKind::Range => {
                let (s, e) = (format_ident!("start"), format_ident!("end"));
                let (sa, ea) = (index_cast(&s), index_cast(&e));
                (
                    quote!(start: u64, end: u64),
                    quote!(#sa, #ea),
                    quote!(start as usize),
                    quote!((end - start) as usize),
                )
            }
        };
        let mut abi_params = Vec::new();
        let mut call_args = Vec::new();
        for p in &self.params {
            let pname = &p.name;
            match p.kind {
                ParamKind::Scalar(t) => {
                    let abi_ty: TokenStream = if t.usize {
                        quote!(u64)
                    } else {
                        let ty = &p.ty;
                        quote!(#ty)
                    };
                    abi_params.push(quote!(#pname: #abi_ty));
                    call_args.push(if t.usize {
                        quote!(#pname as usize)
                    } else {
                        quote!(#pname)
                    });
                }
                ParamKind::Slice { elem, role } => {
                    let e = format_ident!("{}", elem.name());
                    match role {
                        SliceRole::Whole => {
                            let len = format_ident!("{}_len", pname);
                            abi_params.push(quote!(#pname: *const #e));
                            abi_params.push(quote!(#len: u64));
                            call_args.push(quote!(__offload_slice(#pname, #len as usize)));
                        }
                        SliceRole::SplitIn(k) => {
                            let k = k as usize;
                            abi_params.push(quote!(#pname: *const #e));
                            call_args.push(quote!(__offload_slice(
                                #pname.add(#k * #window_start),
                                #k * #window_items
                            )));
                        }
                        SliceRole::SplitInOut(k) | SliceRole::Out(k) => {
                            let k = k as usize;
                            abi_params.push(quote!(#pname: *mut #e));
                            call_args.push(quote!(__offload_slice_mut(
                                #pname.add(#k * #window_start),
                                #k * #window_items
                            )));
                        }
                        SliceRole::Sum(n) => {
                            let n = n as usize;
                            abi_params.push(quote!(#pname: *mut #e));
                            call_args.push(quote!(__offload_slice_mut(#pname, #n)));
                        }
                    }
                }
            }
        }
        let doc = format!(" Kernel ABI entry of `{}`: {}.", name, self.signature());
        quote! {
            #[doc = #doc]
            ///
            /// # Safety
            /// Called by the offload runtime only, with buffers that hold what the manifest
            /// says for this packet (global indices valid for the packet's items).
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn #name(#index_params, #(#abi_params),*) {
                // SAFETY: the runtime checked every buffer against the manifest; split
                // windows of concurrent packets are disjoint, sum buffers are private.
                unsafe { #module::#name(#index_args, #(#call_args),*) }
            }
        }
    }
}

/// The helper functions the shims call, emitted once per generated kernel crate.
pub fn shim_helpers() -> TokenStream {
    quote! {
        /// A slice of `len` elements at `ptr`; empty without touching `ptr` when `len` is 0.
        ///
        /// # Safety
        /// `ptr` must be valid for reads of `len` elements for `'a`.
        #[inline(always)]
        unsafe fn __offload_slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
            if len == 0 { &[] } else { unsafe { core::slice::from_raw_parts(ptr, len) } }
        }

        /// A writable slice of `len` elements at `ptr`; empty when `len` is 0.
        ///
        /// # Safety
        /// `ptr` must be valid for reads and writes of `len` elements for `'a`, and no
        /// other reference may reach them.
        #[inline(always)]
        unsafe fn __offload_slice_mut<'a, T>(ptr: *mut T, len: usize) -> &'a mut [T] {
            if len == 0 { &mut [] } else { unsafe { core::slice::from_raw_parts_mut(ptr, len) } }
        }
    }
}
