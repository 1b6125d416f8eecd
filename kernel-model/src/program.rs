//! Programs: jobs of many steps over named, resident buffers.
//!
//! A [`Program`] declares its buffers once (from a file, zero-filled, filled with a value,
//! or given by the caller), its scalars, and a list of steps. A step runs one kernel over
//! items `0..items` with its parameters bound to buffers and scalar expressions; steps
//! run one after another with a barrier between them, except inside a `together` group,
//! whose steps may run at the same time (and so may not write what another of them
//! reads). A `repeat` group runs its body `count` times with a counter (`0..count`) that
//! scalar expressions may use, and a buffer parameter bound to a list of buffers takes
//! them in turn (`src = ["a", "b"]`: `a` on even iterations, `b` on odd ones): ping-pong.
//! Outputs name the buffers written at the end.
//!
//! Everything that can be checked before running is checked by [`Plan::new`], which also
//! evaluates every step's sizes with the kernel-model checker: a program that gets a
//! `Plan` runs without argument errors. A single `offload run PKG --kernel K` is a
//! one-step program.
//!
//! The file format (TOML), with paths relative to the file:
//!
//! ```toml
//! package = "jacobi.okp"            # the steps' package (more: [packages] NAME = PATH)
//!
//! [scalars]
//! n = 1300
//! tsteps = 500
//!
//! [buffers]
//! a = { type = "f64", file = "grid.bin" }   # raw little-endian elements
//! b = { type = "f64", zeros = "n*n" }       # length in elements
//!
//! [[step]]
//! repeat = "tsteps"
//! counter = "t"
//! body = [
//!   { kernel = "jacobi", items = "n", args = { n = "n", src = ["a", "b"], dst = ["b", "a"] } },
//! ]
//!
//! [outputs]
//! a = "result.bin"
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::expr::{EvalError, Expr, Value};
use crate::layout::{check, ArgLayout, Given, Layout};
use crate::manifest::{ArgKind, KernelSpec, Manifest};
use crate::types::{Access, ScalarType, ScalarValue};

/// A number in a program: an integer or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer.
    Int(i128),
    /// A float.
    Float(f64),
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(v) => write!(f, "{v}"),
            Number::Float(v) => write!(f, "{v:?}"),
        }
    }
}

macro_rules! number_from {
    ($($t:ty => $variant:ident),*) => {$(
        impl From<$t> for Number {
            fn from(v: $t) -> Number {
                Number::$variant(v.into())
            }
        }
    )*};
}
number_from!(i32 => Int, u32 => Int, i64 => Int, u64 => Int, f32 => Float, f64 => Float);

/// Where a buffer's first contents come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Read from a file of raw little-endian elements (path as written).
    File(String),
    /// Zero-filled, with this many elements.
    Zeros(Expr),
    /// Every element set to a value.
    Fill(Number, Expr),
    /// Given by the caller when the program runs (the Rust API).
    Provided,
}

/// A buffer of a program.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferDecl {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub elem: ScalarType,
    /// Its first contents.
    pub init: Init,
}

/// What a kernel parameter is bound to.
#[derive(Debug, Clone, PartialEq)]
pub enum Binding {
    /// A buffer, or several taken in turn by the enclosing repeat's counter.
    Buffers(Vec<String>),
    /// An integer expression of the program's scalars and counters.
    Expr(Expr),
    /// A number.
    Number(Number),
}

/// One kernel run over items `0..items`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The package it comes from (a name of [`Program::packages`]); `None`: the default.
    pub package: Option<String>,
    /// The kernel.
    pub kernel: String,
    /// Items of the step.
    pub items: Expr,
    /// Parameter name → binding.
    pub args: Vec<(String, Binding)>,
}

impl Step {
    /// A step running `kernel` of the default package over `items` items (a number or
    /// an expression of the program's scalars and counters: `Expr::parse("n - 2")`),
    /// with no bindings yet.
    pub fn new(kernel: &str, items: impl Into<Expr>) -> Step {
        Step {
            package: None,
            kernel: kernel.to_string(),
            items: items.into(),
            args: Vec::new(),
        }
    }

    /// The step's kernel comes from the named package (`[packages]`).
    pub fn from_package(mut self, package: &str) -> Step {
        self.package = Some(package.to_string());
        self
    }

    /// Binds buffer parameter `param` to program buffer `buffer`.
    pub fn buffer(self, param: &str, buffer: &str) -> Step {
        self.buffers(param, &[buffer])
    }

    /// Binds buffer parameter `param` to `buffers` in turn, by the innermost repeat's
    /// counter (ping-pong: `["a", "b"]`).
    pub fn buffers(mut self, param: &str, buffers: &[&str]) -> Step {
        let list = buffers.iter().map(|b| b.to_string()).collect();
        self.args.push((param.to_string(), Binding::Buffers(list)));
        self
    }

    /// Binds scalar parameter `param` to an expression of the program's scalars and
    /// counters (a plain name passes a float scalar as it is).
    pub fn value(mut self, param: &str, expr: impl Into<Expr>) -> Step {
        self.args
            .push((param.to_string(), Binding::Expr(expr.into())));
        self
    }

    /// Binds scalar parameter `param` to a number.
    pub fn number(mut self, param: &str, value: impl Into<Number>) -> Step {
        self.args
            .push((param.to_string(), Binding::Number(value.into())));
        self
    }
}

impl StepItem {
    /// `body` repeated `count` times, its counter (if named) going `0..count`.
    pub fn repeat(count: impl Into<Expr>, counter: Option<&str>, body: Vec<StepItem>) -> StepItem {
        StepItem::Repeat {
            count: count.into(),
            counter: counter.map(str::to_string),
            body,
        }
    }
}

impl From<Step> for StepItem {
    fn from(step: Step) -> StepItem {
        StepItem::Step(step)
    }
}

/// An entry of a program's steps.
#[derive(Debug, Clone, PartialEq)]
pub enum StepItem {
    /// One step, with a barrier after it.
    Step(Step),
    /// A body repeated `count` times, its counter going `0..count`.
    Repeat {
        /// How many times.
        count: Expr,
        /// The counter's name, if the body uses it.
        counter: Option<String>,
        /// What is repeated.
        body: Vec<StepItem>,
    },
    /// Steps without a barrier between them (one after the whole group).
    Together(Vec<Step>),
}

/// A job of many steps. See the module documentation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Program {
    /// The default package's path (for steps that name none).
    pub package: Option<String>,
    /// Named packages: name → path.
    pub packages: Vec<(String, String)>,
    /// Named values.
    pub scalars: Vec<(String, Number)>,
    /// The buffers.
    pub buffers: Vec<BufferDecl>,
    /// The steps.
    pub steps: Vec<StepItem>,
    /// Buffer → file written when the program is done.
    pub outputs: Vec<(String, String)>,
}

/// A program that cannot run, with the culprit named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgramError {
    /// Not valid TOML, or a key that does not belong.
    #[error("not a valid program: {0}")]
    Toml(String),
    /// Something in the program is wrong; `at` says where.
    #[error("{at}: {reason}")]
    Invalid {
        /// Where: `buffer `a``, `step 3 (jacobi)`, `outputs`.
        at: String,
        /// What.
        reason: String,
    },
    /// A step's arguments do not fit its kernel.
    #[error("{}{source}", if at.is_empty() { String::new() } else { format!("{at}: ") })]
    Args {
        /// Where (empty for a one-step job: the checker's error names the kernel).
        at: String,
        /// The checker's error.
        source: Box<crate::layout::ArgError>,
    },
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> ProgramError {
    ProgramError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

impl Program {
    /// Parses a program file's text.
    pub fn parse(text: &str) -> Result<Program, ProgramError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ProgramError::Toml(e.message().to_string()))?;
        let mut program = Program::default();
        for (key, value) in table {
            match key.as_str() {
                "package" => program.package = Some(string(&value, "package")?),
                "packages" => {
                    for (name, path) in table_of(&value, "packages")? {
                        program.packages.push((name.clone(), string(path, &format!("package `{name}`"))?));
                    }
                }
                "scalars" => {
                    for (name, v) in table_of(&value, "scalars")? {
                        program.scalars.push((name.clone(), number(v, &format!("scalar `{name}`"))?));
                    }
                }
                "buffers" => {
                    for (name, v) in table_of(&value, "buffers")? {
                        program.buffers.push(buffer_decl(name, v)?);
                    }
                }
                "step" => {
                    let list = value
                        .as_array()
                        .ok_or_else(|| invalid("step", "`step` must be a list of steps ([[step]])"))?;
                    for (n, item) in list.iter().enumerate() {
                        program.steps.push(step_item(item, &format!("step {}", n + 1))?);
                    }
                }
                "outputs" => {
                    for (name, path) in table_of(&value, "outputs")? {
                        program.outputs.push((name.clone(), string(path, &format!("output `{name}`"))?));
                    }
                }
                other => {
                    return Err(invalid(
                        other,
                        "unknown key (a program has package, packages, scalars, buffers, step and outputs)",
                    ))
                }
            }
        }
        Ok(program)
    }

    fn scalar(&self, name: &str) -> Option<Number> {
        self.scalars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Evaluates `expr` with the program's scalars.
    fn eval_count(&self, expr: &Expr) -> Result<u64, EvalError> {
        expr.eval_count(&|name| self.scalar(name).map(number_value))
    }

    /// The element count of each buffer whose size the program knows (zero-filled and
    /// filled buffers); files and provided buffers are measured when the job is built.
    pub fn declared_len(&self, decl: &BufferDecl) -> Result<Option<u64>, ProgramError> {
        let at = format!("buffer `{}`", decl.name);
        match &decl.init {
            Init::Zeros(len) | Init::Fill(_, len) => self
                .eval_count(len)
                .map(Some)
                .map_err(|e| invalid(at, format!("its length `{len}`: {e}"))),
            Init::File(_) | Init::Provided => Ok(None),
        }
    }
}

fn number_value(n: Number) -> Value {
    match n {
        Number::Int(v) => Value::Int(v),
        Number::Float(_) => Value::NotInteger,
    }
}

fn table_of<'a>(value: &'a toml::Value, what: &str) -> Result<&'a toml::Table, ProgramError> {
    value
        .as_table()
        .ok_or_else(|| invalid(what, format!("`{what}` must be a table")))
}

fn string(value: &toml::Value, what: &str) -> Result<String, ProgramError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(what, "expected a string"))
}

fn number(value: &toml::Value, what: &str) -> Result<Number, ProgramError> {
    match value {
        toml::Value::Integer(v) => Ok(Number::Int(i128::from(*v))),
        toml::Value::Float(v) => Ok(Number::Float(*v)),
        _ => Err(invalid(what, "expected a number")),
    }
}

fn expr(value: &toml::Value, what: &str) -> Result<Expr, ProgramError> {
    match value {
        toml::Value::Integer(v) if *v >= 0 => Ok(Expr::Num(*v as u64)),
        toml::Value::String(text) => {
            Expr::parse(text).map_err(|e| invalid(what, format!("`{text}`: {e}")))
        }
        _ => Err(invalid(
            what,
            "expected a count: a whole number or an expression like \"n - 2\"",
        )),
    }
}

fn buffer_decl(name: &str, value: &toml::Value) -> Result<BufferDecl, ProgramError> {
    let at = format!("buffer `{name}`");
    let table = value.as_table().ok_or_else(|| {
        invalid(
            &at,
            "expected a table such as { type = \"f64\", zeros = \"n\" }",
        )
    })?;
    let elem_text = table
        .get("type")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| invalid(&at, "needs a `type` (u8 i32 u32 i64 u64 f32 f64)"))?;
    let elem = ScalarType::parse(elem_text)
        .ok_or_else(|| invalid(&at, format!("unknown type `{elem_text}`")))?;
    let init = match (
        table.get("file"),
        table.get("zeros"),
        table.get("fill"),
        table.get("len"),
    ) {
        (Some(file), None, None, None) => Init::File(string(file, &at)?),
        (None, Some(len), None, None) => Init::Zeros(expr(len, &at)?),
        (None, None, Some(value), Some(len)) => Init::Fill(number(value, &at)?, expr(len, &at)?),
        (None, None, None, None) => Init::Provided,
        _ => {
            return Err(invalid(
                &at,
                "give one of `file = PATH`, `zeros = LEN` or `fill = VALUE, len = LEN`",
            ))
        }
    };
    if let Some(key) = table
        .keys()
        .find(|k| !["type", "file", "zeros", "fill", "len"].contains(&k.as_str()))
    {
        return Err(invalid(&at, format!("unknown key `{key}`")));
    }
    Ok(BufferDecl {
        name: name.to_string(),
        elem,
        init,
    })
}

fn step_item(value: &toml::Value, at: &str) -> Result<StepItem, ProgramError> {
    let table = value
        .as_table()
        .ok_or_else(|| invalid(at, "a step is a table"))?;
    if let Some(count) = table.get("repeat") {
        let counter = table.get("counter").map(|c| string(c, at)).transpose()?;
        let body = table
            .get("body")
            .and_then(toml::Value::as_array)
            .ok_or_else(|| invalid(at, "a `repeat` needs a `body`: a list of steps"))?;
        let body = body
            .iter()
            .enumerate()
            .map(|(n, item)| step_item(item, &format!("{at}, body step {}", n + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(StepItem::Repeat {
            count: expr(count, at)?,
            counter,
            body,
        });
    }
    if let Some(group) = table.get("together") {
        let list = group
            .as_array()
            .ok_or_else(|| invalid(at, "`together` is a list of steps"))?;
        let steps = list
            .iter()
            .enumerate()
            .map(
                |(n, item)| match step_item(item, &format!("{at}, together step {}", n + 1))? {
                    StepItem::Step(step) => Ok(step),
                    _ => Err(invalid(at, "a `together` group holds plain steps only")),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(StepItem::Together(steps));
    }
    let kernel_text = table
        .get("kernel")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| {
            invalid(
                at,
                "a step needs a `kernel` (or is a `repeat` or `together` group)",
            )
        })?;
    let (package, kernel) = match kernel_text.split_once('.') {
        Some((p, k)) => (Some(p.to_string()), k.to_string()),
        None => (None, kernel_text.to_string()),
    };
    let items = expr(
        table
            .get("items")
            .ok_or_else(|| invalid(at, "a step needs `items`"))?,
        at,
    )?;
    let mut args = Vec::new();
    if let Some(bindings) = table.get("args") {
        for (param, value) in table_of(bindings, at)? {
            let binding = match value {
                toml::Value::Array(list) => Binding::Buffers(
                    list.iter()
                        .map(|b| string(b, &format!("{at}, argument `{param}`")))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                toml::Value::Integer(v) => Binding::Number(Number::Int(i128::from(*v))),
                toml::Value::Float(v) => Binding::Number(Number::Float(*v)),
                toml::Value::String(text) => Binding::Expr(Expr::parse(text).map_err(|e| {
                    invalid(at, format!("argument `{param}`: `{text}`: {e}"))
                })?),
                _ => {
                    return Err(invalid(
                        at,
                        format!("argument `{param}`: expected a buffer name, a list of them, a number or an expression"),
                    ))
                }
            };
            args.push((param.clone(), binding));
        }
    }
    if let Some(key) = table
        .keys()
        .find(|k| !["kernel", "items", "args"].contains(&k.as_str()))
    {
        return Err(invalid(at, format!("unknown key `{key}`")));
    }
    Ok(StepItem::Step(Step {
        package,
        kernel,
        items,
        args,
    }))
}

/// One run of a step as it will execute: the kernel, its checked layout, and for each
/// buffer parameter the index of the program buffer it works on.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Index into [`Plan::packages`].
    pub package: usize,
    /// The kernel.
    pub kernel: String,
    /// The job of this run: items, every size and scalar.
    pub layout: Layout,
    /// Per manifest argument: the program buffer bound to it (`None` for scalars).
    pub buffers: Vec<Option<usize>>,
    /// Whether a barrier follows (false inside a `together` group but its last step).
    pub barrier_after: bool,
}

/// A checked program, ready to run: every step instance can be produced with its checked
/// layout, and nothing about it can fail at run time but the kernels themselves.
#[derive(Debug, Clone)]
pub struct Plan {
    program: Program,
    /// Package names in order: `""` is the default package.
    pub packages: Vec<String>,
    /// Per program buffer: its element count.
    pub lengths: Vec<u64>,
    steps: usize,
}

impl Plan {
    /// Checks `program` against the manifests of its packages (`manifests[i]` belongs to
    /// `package_names()[i]`) with its buffers' element counts (`lengths`, one per buffer,
    /// for files and provided buffers as measured). Runs through every step instance once:
    /// every misuse is found before anything runs.
    pub fn new(
        program: Program,
        manifests: &[&Manifest],
        lengths: Vec<u64>,
    ) -> Result<Plan, ProgramError> {
        let packages = package_names(&program);
        if manifests.len() != packages.len() || lengths.len() != program.buffers.len() {
            return Err(invalid(
                "program",
                "the packages or buffer sizes given do not match the program",
            ));
        }
        let mut names = HashSet::new();
        for decl in &program.buffers {
            if !names.insert(decl.name.as_str()) {
                return Err(invalid(format!("buffer `{}`", decl.name), "declared twice"));
            }
        }
        for (name, _) in &program.scalars {
            if names.contains(name.as_str()) {
                return Err(invalid(
                    format!("scalar `{name}`"),
                    "has the name of a buffer",
                ));
            }
        }
        for (buffer, _) in &program.outputs {
            if !names.contains(buffer.as_str()) {
                return Err(invalid("outputs", format!("there is no buffer `{buffer}`")));
            }
        }
        let mut plan = Plan {
            program,
            packages,
            lengths,
            steps: 0,
        };
        let mut count = 0usize;
        plan.for_each(manifests, &mut |_| {
            count += 1;
            Ok(())
        })?;
        // A `repeat` of 0 runs nothing and is fine (0 time steps); a program without any
        // step written is a mistake.
        if plan.program.steps.is_empty() {
            return Err(invalid("program", "it has no steps"));
        }
        plan.steps = count;
        Ok(plan)
    }

    /// The program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The number of step runs.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Every step run in order, checked, handed to `visit` (which may stop the walk by
    /// returning an error).
    pub fn for_each(
        &self,
        manifests: &[&Manifest],
        visit: &mut dyn FnMut(Instance) -> Result<(), ProgramError>,
    ) -> Result<(), ProgramError> {
        let mut counters = Vec::new();
        let mut walk = Walk {
            plan: self,
            manifests,
            step: 0,
        };
        walk.items(&self.program.steps, &mut counters, "step", visit)
    }
}

/// The program's package names: `""` for the default package first, if it has one,
/// then the named ones in order.
pub fn package_names(program: &Program) -> Vec<String> {
    let mut names = Vec::new();
    if program.package.is_some() {
        names.push(String::new());
    }
    names.extend(program.packages.iter().map(|(n, _)| n.clone()));
    names
}

struct Walk<'a> {
    plan: &'a Plan,
    manifests: &'a [&'a Manifest],
    step: usize,
}

impl Walk<'_> {
    fn items(
        &mut self,
        items: &[StepItem],
        counters: &mut Vec<(String, u64)>,
        at: &str,
        visit: &mut dyn FnMut(Instance) -> Result<(), ProgramError>,
    ) -> Result<(), ProgramError> {
        for (n, item) in items.iter().enumerate() {
            let here = format!("{at} {}", n + 1);
            match item {
                StepItem::Step(step) => {
                    let instance = self.instance(step, counters, &here, true)?;
                    visit(instance)?;
                }
                StepItem::Together(steps) => {
                    let mut group = Vec::new();
                    for (k, step) in steps.iter().enumerate() {
                        let last = k + 1 == steps.len();
                        group.push(self.instance(
                            step,
                            counters,
                            &format!("{here}.{}", k + 1),
                            last,
                        )?);
                    }
                    check_together(&group, &self.plan.program, &here)?;
                    for instance in group {
                        visit(instance)?;
                    }
                }
                StepItem::Repeat {
                    count,
                    counter,
                    body,
                } => {
                    let times = count
                        .eval_count(&|name| self.value(name, counters))
                        .map_err(|e| invalid(&here, format!("its repeat count `{count}`: {e}")))?;
                    for i in 0..times {
                        counters.push((counter.clone().unwrap_or_default(), i));
                        let result =
                            self.items(body, counters, &format!("{here}, body step"), visit);
                        counters.pop();
                        result?;
                    }
                }
            }
        }
        Ok(())
    }

    fn value(&self, name: &str, counters: &[(String, u64)]) -> Option<Value> {
        counters
            .iter()
            .rev()
            .find(|(c, _)| c == name)
            .map(|(_, v)| Value::Int(i128::from(*v)))
            .or_else(|| self.plan.program.scalar(name).map(number_value))
    }

    fn instance(
        &mut self,
        step: &Step,
        counters: &[(String, u64)],
        at: &str,
        barrier_after: bool,
    ) -> Result<Instance, ProgramError> {
        self.step += 1;
        let at = format!("{at} ({})", step.kernel);
        let program = &self.plan.program;
        let package = match &step.package {
            None => self
                .plan
                .packages
                .iter()
                .position(String::is_empty)
                .ok_or_else(|| {
                    invalid(
                    &at,
                    "no package: give `package = PATH` at the top, or name one (`PACKAGE.KERNEL`)",
                )
                })?,
            Some(name) => self
                .plan
                .packages
                .iter()
                .position(|p| p == name)
                .ok_or_else(|| {
                    invalid(&at, format!("there is no package `{name}` in [packages]"))
                })?,
        };
        let manifest = self.manifests[package];
        let spec: &KernelSpec = manifest.kernel(&step.kernel).ok_or_else(|| {
            invalid(
                &at,
                format!(
                    "the package has no kernel `{}` (it has: {})",
                    step.kernel,
                    manifest.kernel_names()
                ),
            )
        })?;
        for (param, _) in &step.args {
            if spec.arg(param).is_none() {
                return Err(invalid(
                    &at,
                    format!(
                        "binds `{param}`, which is not a parameter of {}",
                        spec.signature()
                    ),
                ));
            }
        }
        let items = step
            .items
            .eval_count(&|name| self.value(name, counters))
            .map_err(|e| invalid(&at, format!("its items `{}`: {e}", step.items)))?;
        let turn = counters.last().map_or(0, |(_, i)| *i);
        let mut given = Vec::with_capacity(spec.args.len());
        let mut buffers = Vec::with_capacity(spec.args.len());
        for arg in &spec.args {
            let binding = step
                .args
                .iter()
                .find(|(p, _)| *p == arg.name)
                .map(|(_, b)| b);
            let describe = |reason: String| invalid(&at, format!("argument `{arg}`: {reason}"));
            match (&arg.kind, binding) {
                (ArgKind::Scalar(_), None) if arg.derived.is_some() => {
                    buffers.push(None);
                }
                (_, None) => return Err(describe("is not bound (add it to `args`)".into())),
                (ArgKind::Scalar(ty), Some(Binding::Buffers(list))) => {
                    // A plain name given as a string parses as an expression; a list is
                    // buffers.
                    return Err(describe(format!(
                        "is a `{ty}` scalar, but buffers {list:?} were bound"
                    )));
                }
                (ArgKind::Scalar(ty), Some(Binding::Number(n))) => {
                    given.push(Given::Scalar(to_scalar(*n, *ty).map_err(describe)?));
                    buffers.push(None);
                }
                (ArgKind::Scalar(ty), Some(Binding::Expr(e))) => {
                    let value = match (e, ty.is_float()) {
                        // A float parameter takes a float scalar by name as it is.
                        (Expr::Var(name), true) => match self.value(name, counters) {
                            Some(Value::NotInteger) => program
                                .scalar(name)
                                .map(|n| to_scalar(n, *ty))
                                .ok_or_else(|| describe(format!("`{name}` is not defined")))?
                                .map_err(describe)?,
                            _ => int_scalar(e, *ty, &|n| self.value(n, counters))
                                .map_err(describe)?,
                        },
                        _ => int_scalar(e, *ty, &|n| self.value(n, counters)).map_err(describe)?,
                    };
                    given.push(Given::Scalar(value));
                    buffers.push(None);
                }
                (
                    ArgKind::Buffer { access, elem, .. },
                    Some(binding @ (Binding::Buffers(_) | Binding::Expr(Expr::Var(_)))),
                ) => {
                    // A list takes its buffers in turn (ping-pong); a name is one buffer.
                    let name = match binding {
                        Binding::Buffers(list) => &list[(turn as usize) % list.len().max(1)],
                        Binding::Expr(Expr::Var(name)) => name,
                        _ => continue,
                    };
                    let index = self.buffer_index(name, &at)?;
                    let decl = &program.buffers[index];
                    if decl.elem != *elem {
                        return Err(describe(format!(
                            "buffer `{name}` holds {}, the parameter takes {elem}",
                            decl.elem
                        )));
                    }
                    given.push(Given::Buffer {
                        bytes: self.plan.lengths[index] * elem.size() as u64,
                        elem: Some(*elem),
                        access: Some(*access),
                    });
                    buffers.push(Some(index));
                }
                (ArgKind::Buffer { .. }, Some(other)) => {
                    return Err(describe(format!(
                        "is a buffer, but {} was bound",
                        match other {
                            Binding::Number(n) => format!("the number {n}"),
                            Binding::Expr(e) => format!("the expression `{e}`"),
                            Binding::Buffers(_) => "buffers".into(),
                        }
                    )))
                }
            }
        }
        let layout = check(spec, items, &given).map_err(|source| ProgramError::Args {
            at: at.clone(),
            source: Box::new(source),
        })?;
        check_aliasing(&layout, &buffers, spec, program, &at)?;
        Ok(Instance {
            package,
            kernel: step.kernel.clone(),
            layout,
            buffers,
            barrier_after,
        })
    }

    fn buffer_index(&self, name: &str, at: &str) -> Result<usize, ProgramError> {
        self.plan
            .program
            .buffers
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| invalid(at, format!("there is no buffer `{name}`")))
    }
}

fn to_scalar(n: Number, ty: ScalarType) -> Result<ScalarValue, String> {
    match (n, ty) {
        (Number::Float(v), ScalarType::F32) => Ok(ScalarValue::F32(v as f32)),
        (Number::Float(v), ScalarType::F64) => Ok(ScalarValue::F64(v)),
        (Number::Float(v), _) => Err(format!("{v:?} is not a whole number for a `{ty}`")),
        (Number::Int(v), _) => ScalarValue::from_integer(v, ty),
    }
}

fn int_scalar(
    e: &Expr,
    ty: ScalarType,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<ScalarValue, String> {
    let v = e.eval(lookup).map_err(|err| format!("`{e}`: {err}"))?;
    ScalarValue::from_integer(v, ty).map_err(|err| format!("`{e}`: {err}"))
}

/// A buffer bound to two parameters of one step is refused when one of them writes it:
/// kernels are compiled assuming their buffers do not overlap.
fn check_aliasing(
    layout: &Layout,
    buffers: &[Option<usize>],
    spec: &KernelSpec,
    program: &Program,
    at: &str,
) -> Result<(), ProgramError> {
    let mut seen: HashMap<usize, (usize, bool)> = HashMap::new();
    for (slot, buffer) in buffers.iter().enumerate() {
        let Some(buffer) = buffer else { continue };
        let writes = layout.args[slot]
            .access()
            .is_some_and(Access::writes_output);
        if let Some(&(other, other_writes)) = seen.get(buffer) {
            if writes || other_writes {
                return Err(invalid(
                    at,
                    format!(
                        "buffer `{}` is bound to both `{}` and `{}`, and one of them writes it: bind another buffer (ping-pong with a list)",
                        program.buffers[*buffer].name, spec.args[other].name, spec.args[slot].name
                    ),
                ));
            }
        }
        seen.insert(*buffer, (slot, writes));
    }
    Ok(())
}

/// Steps of one `together` group run at the same time: none may write a buffer another
/// of them reads or writes.
fn check_together(group: &[Instance], program: &Program, at: &str) -> Result<(), ProgramError> {
    let uses = |instance: &Instance| -> BTreeMap<usize, bool> {
        let mut map = BTreeMap::new();
        for (slot, buffer) in instance.buffers.iter().enumerate() {
            if let Some(b) = buffer {
                let writes = instance.layout.args[slot]
                    .access()
                    .is_some_and(Access::writes_output);
                *map.entry(*b).or_insert(false) |= writes;
            }
        }
        map
    };
    for (i, a) in group.iter().enumerate() {
        for b in &group[i + 1..] {
            let (ua, ub) = (uses(a), uses(b));
            for (buffer, writes_a) in &ua {
                if let Some(writes_b) = ub.get(buffer) {
                    if *writes_a || *writes_b {
                        let (writer, other) = if *writes_a { (a, b) } else { (b, a) };
                        return Err(invalid(
                            at,
                            format!(
                                "`{}` writes buffer `{}`, which `{}` in the same `together` group uses: steps that depend on each other need a barrier between them (separate steps)",
                                writer.kernel, program.buffers[*buffer].name, other.kernel
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

impl Instance {
    /// Whether this run writes program buffer `buffer` (for the `sum` buffers' and
    /// outputs' bookkeeping).
    pub fn writes(&self, buffer: usize) -> bool {
        self.buffers
            .iter()
            .zip(&self.layout.args)
            .any(|(b, a)| *b == Some(buffer) && a.access().is_some_and(Access::writes_output))
    }

    /// The `sum` parameters' slots.
    pub fn sum_slots(&self) -> Vec<usize> {
        self.layout
            .args
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, ArgLayout::Sum { .. }))
            .map(|(slot, _)| slot)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STENCIL: &str = r#"
        version = 2
        [[kernel]]
        name = "jacobi"
        kind = "item"
        args = ["n: u64", "src: in f64[n] halo 1", "dst: out f64[n]"]

        [[kernel]]
        name = "scale"
        kind = "item"
        args = ["a: f64", "x: inout f64[1]"]

        [[kernel]]
        name = "total"
        kind = "item"
        args = ["x: in f64[1]", "t: sum f64[1]"]
    "#;

    fn manifest() -> Manifest {
        Manifest::parse(STENCIL).expect("manifest")
    }

    fn plan(text: &str, lengths: Vec<u64>) -> Result<Plan, ProgramError> {
        let m = manifest();
        Plan::new(Program::parse(text).expect("parses"), &[&m], lengths)
    }

    const JACOBI: &str = r#"
        package = "stencil.okp"
        [scalars]
        n = 4
        tsteps = 3
        alpha = 0.5
        [buffers]
        a = { type = "f64", file = "grid.bin" }
        b = { type = "f64", zeros = "n*n" }
        [[step]]
        repeat = "tsteps"
        counter = "t"
        body = [
          { kernel = "jacobi", items = "n", args = { n = "n", src = ["a", "b"], dst = ["b", "a"] } },
        ]
        [[step]]
        kernel = "scale"
        items = "n*n"
        args = { a = "alpha", x = "a" }
        [outputs]
        b = "out.bin"
    "#;

    #[test]
    fn a_program_unrolls_into_checked_instances_with_alternating_buffers() {
        let plan = plan(JACOBI, vec![16, 16]).expect("valid");
        assert_eq!(plan.steps(), 4);
        let m = manifest();
        let mut seen = Vec::new();
        plan.for_each(&[&m], &mut |i| {
            seen.push((i.kernel.clone(), i.buffers.clone()));
            Ok(())
        })
        .expect("walk");
        assert_eq!(seen[0], ("jacobi".into(), vec![None, Some(0), Some(1)]));
        assert_eq!(seen[1], ("jacobi".into(), vec![None, Some(1), Some(0)]));
        assert_eq!(seen[2], ("jacobi".into(), vec![None, Some(0), Some(1)]));
        assert_eq!(seen[3], ("scale".into(), vec![None, Some(0)]));
        let p = Program::parse(JACOBI).expect("parses");
        assert_eq!(p.declared_len(&p.buffers[1]), Ok(Some(16)));
    }

    fn refused(text: &str, lengths: Vec<u64>, needle: &str) {
        let err = plan(text, lengths)
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains(needle), "{err}");
    }

    #[test]
    fn every_misuse_is_found_before_anything_runs() {
        // A size expression that does not match a buffer.
        refused(
            JACOBI,
            vec![15, 16],
            "buffer `src` (`src: in f64[n] halo 1`) must be 16 elements",
        );
        // A binding to an unknown parameter.
        refused(
            &JACOBI.replace(
                "args = { a = \"alpha\", x = \"a\" }",
                "args = { a = \"alpha\", x = \"a\", y = \"b\" }",
            ),
            vec![16, 16],
            "binds `y`, which is not a parameter",
        );
        // A parameter left unbound.
        refused(
            &JACOBI.replace(
                "args = { a = \"alpha\", x = \"a\" }",
                "args = { x = \"a\" }",
            ),
            vec![16, 16],
            "argument `a: f64`: is not bound",
        );
        // One buffer read and written by one step.
        refused(
            &JACOBI.replace(
                "src = [\"a\", \"b\"], dst = [\"b\", \"a\"]",
                "src = \"a\", dst = \"a\"",
            ),
            vec![16, 16],
            "buffer `a` is bound to both `src` and `dst`",
        );
        // A step writing a buffer another step of its group reads.
        let together = r#"
            package = "stencil.okp"
            [buffers]
            x = { type = "f64", zeros = 8 }
            t = { type = "f64", zeros = 1 }
            [[step]]
            together = [
              { kernel = "scale", items = 8, args = { a = 2.0, x = "x" } },
              { kernel = "total", items = 8, args = { x = "x", t = "t" } },
            ]
        "#;
        // Buffers are in name order: t, x.
        refused(
            together,
            vec![1, 8],
            "`scale` writes buffer `x`, which `total` in the same `together` group uses",
        );
        // Wrong element type, unknown buffer, unknown kernel, a count that overflows.
        refused(
            &JACOBI.replace(
                "b = { type = \"f64\", zeros = \"n*n\" }",
                "b = { type = \"f32\", zeros = \"n*n\" }",
            ),
            vec![16, 16],
            "holds f32, the parameter takes f64",
        );
        refused(
            &JACOBI.replace("x = \"a\"", "x = \"c\""),
            vec![16, 16],
            "there is no buffer `c`",
        );
        refused(
            &JACOBI.replace("kernel = \"scale\"", "kernel = \"scal\""),
            vec![16, 16],
            "no kernel `scal`",
        );
        refused(
            &JACOBI.replace("tsteps = 3", "tsteps = -1"),
            vec![16, 16],
            "repeat count",
        );
        refused(
            &JACOBI.replace("[outputs]\n        b", "[outputs]\n        q"),
            vec![16, 16],
            "there is no buffer `q`",
        );
    }

    #[test]
    fn malformed_programs_name_the_problem() {
        for (text, needle) in [
            ("steps = 1", "unknown key"),
            ("[buffers]\na = { zeros = 3 }", "needs a `type`"),
            (
                "[buffers]\na = { type = \"f64\", zeros = 3, file = \"x\" }",
                "give one of",
            ),
            ("[[step]]\nitems = 3", "needs a `kernel`"),
            (
                "[[step]]\nkernel = \"k\"\nitems = \"n +\"",
                "ends too early",
            ),
            ("[[step]]\nrepeat = 3", "needs a `body`"),
        ] {
            let err = Program::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
