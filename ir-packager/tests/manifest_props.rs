//! Property tests of the manifest parser: whatever a valid manifest is (version 1, or
//! version 2 with halos and lengths the runtime fills in), rendering it and parsing it
//! back gives the same manifest; arbitrary argument strings never panic.

use ir_packager::manifest::{parse_arg, Derived};
use ir_packager::{
    Access, Arg, ArgKind, Expr, KernelKind, KernelSpec, Manifest, ScalarType, Shape,
};
use proptest::prelude::*;

fn scalar_type() -> impl Strategy<Value = ScalarType> {
    prop::sample::select(ScalarType::ALL.to_vec())
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,12}"
}

fn arg_kind() -> impl Strategy<Value = ArgKind> {
    prop_oneof![
        scalar_type()
            .prop_filter("u8 is for buffers", |t| t.is_scalar_arg())
            .prop_map(ArgKind::Scalar),
        (scalar_type(), 1u64..1000, prop::option::of(1u64..8)).prop_map(|(elem, k, halo)| {
            ArgKind::Buffer {
                access: Access::In,
                elem,
                shape: Shape::PerItem(Expr::from(k)),
                halo: halo.map(Expr::from),
            }
        }),
        scalar_type().prop_map(|elem| ArgKind::buffer(Access::In, elem, Shape::Whole)),
        (
            prop::sample::select(vec![Access::Out, Access::InOut]),
            scalar_type(),
            1u64..64
        )
            .prop_map(|(access, elem, k)| ArgKind::buffer(
                access,
                elem,
                Shape::PerItem(Expr::from(k))
            )),
        (scalar_type(), 1u64..4096).prop_map(|(elem, n)| ArgKind::buffer(
            Access::Sum,
            elem,
            Shape::Fixed(Expr::from(n))
        )),
    ]
}

fn kernel() -> impl Strategy<Value = KernelSpec> {
    (
        name(),
        prop::bool::ANY,
        prop::collection::vec((name(), arg_kind()), 0..12),
        prop::bool::ANY,
    )
        .prop_map(|(name, range, args, lengths)| {
            let mut seen = std::collections::HashSet::new();
            let mut args: Vec<Arg> = args
                .into_iter()
                .filter(|(n, _)| seen.insert(n.clone()))
                .map(|(name, kind)| Arg::new(name, kind))
                .collect();
            // `NAME_len: u64 = len(NAME)` for each buffer: lengths the runtime fills in.
            if lengths {
                let buffers: Vec<String> = args
                    .iter()
                    .filter(|a| matches!(a.kind, ArgKind::Buffer { .. }))
                    .map(|a| a.name.clone())
                    .collect();
                for buffer in buffers {
                    let len_name = format!("{buffer}_len");
                    if seen.insert(len_name.clone()) {
                        args.push(Arg {
                            name: len_name,
                            kind: ArgKind::Scalar(ScalarType::U64),
                            derived: Some(Derived::LenOf(buffer)),
                        });
                    }
                }
            }
            KernelSpec {
                name,
                kind: if range {
                    KernelKind::Range
                } else {
                    KernelKind::Item
                },
                args,
            }
        })
}

proptest! {
    #[test]
    fn rendered_manifests_parse_back_unchanged(kernels in prop::collection::vec(kernel(), 1..5)) {
        let mut seen = std::collections::HashSet::new();
        let kernels: Vec<KernelSpec> = kernels.into_iter().filter(|k| seen.insert(k.name.clone())).collect();
        let manifest = Manifest { kernels };
        let text = manifest.to_toml();
        let parsed = Manifest::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(parsed, manifest);
    }

    #[test]
    fn every_argument_renders_as_it_parses(name in name(), kind in arg_kind()) {
        let arg = Arg::new(name, kind);
        prop_assert_eq!(parse_arg(&arg.to_string()), Ok(arg));
    }

    #[test]
    fn arbitrary_argument_text_never_panics(text in ".{0,40}") {
        let _ = parse_arg(&text);
    }

    #[test]
    fn arbitrary_manifest_text_never_panics(text in "(\\[\\[kernel\\]\\]|name|kind|args|=|\"|\\[|\\]|,|item|range|f32|in|out|:| |\n|[a-z0-9]){0,80}") {
        let _ = Manifest::parse(&text);
    }
}
