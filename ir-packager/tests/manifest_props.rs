//! Property tests of the manifest parser: whatever a valid manifest is, rendering it
//! and parsing it back gives the same manifest; arbitrary argument strings never panic.

use ir_packager::manifest::parse_arg;
use ir_packager::{Access, Arg, ArgKind, KernelKind, KernelSpec, Manifest, ScalarType, Shape};
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
        (scalar_type(), 1u64..1000).prop_map(|(elem, k)| ArgKind::Buffer {
            access: Access::In,
            elem,
            shape: Shape::PerItem(k)
        }),
        scalar_type().prop_map(|elem| ArgKind::Buffer {
            access: Access::In,
            elem,
            shape: Shape::Whole
        }),
        (
            prop::sample::select(vec![Access::Out, Access::InOut]),
            scalar_type(),
            1u64..64
        )
            .prop_map(|(access, elem, k)| ArgKind::Buffer {
                access,
                elem,
                shape: Shape::PerItem(k)
            }),
        (scalar_type(), 1u64..4096).prop_map(|(elem, n)| ArgKind::Buffer {
            access: Access::Sum,
            elem,
            shape: Shape::Fixed(n)
        }),
    ]
}

fn kernel() -> impl Strategy<Value = KernelSpec> {
    (
        name(),
        prop::bool::ANY,
        prop::collection::vec((name(), arg_kind()), 0..12),
    )
        .prop_map(|(name, range, args)| {
            let mut seen = std::collections::HashSet::new();
            let args = args
                .into_iter()
                .filter(|(n, _)| seen.insert(n.clone()))
                .map(|(name, kind)| Arg { name, kind })
                .collect();
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
        let arg = Arg { name, kind };
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
