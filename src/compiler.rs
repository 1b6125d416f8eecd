//! The compiler helper: on a code-cache miss, `offload run` has LLVM compile the kernel in
//! a process of its own (`offload __compile-object`), so that LLVM failing on hostile or
//! unexpected bitcode (an assertion, a crash, running out of memory) ends the helper and
//! fails the run with a sentence, not the `offload` process with a signal. The helper
//! gets the package's bytes on stdin and the kernel, target and code-generation settings
//! as arguments, runs [`node_jit::compile_entry_object`], and writes one byte of what
//! linking needs (bit 0: libm, bit 1: libgcc) and the object file to stdout; linking, the
//! code cache and loading stay in the caller ([`node_jit::ObjectCompiler`]), which thus
//! never loads libLLVM. It dies with the thread that started it.
//!
//! The helper loads LLVM and reads its request first, then closes every other descriptor
//! and applies the kernel workers' CPU sandbox profile ([`sandbox::Config::cpu`], plus
//! `sysinfo`, which LLVM asks for the machine's memory) before LLVM reads the bitcode:
//! code taken over through an LLVM bug can open no file, start no process and reach no
//! network; it can only answer on stdout.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use ir_packager::Package;
use node_jit::{
    HostTarget, JitError, KernelObject, LinkNeeds, ObjectCompiler, OptLevel, Pipeline, Tuning,
};

/// The helper's descriptor for the sandbox's fault records (as a node worker's).
const REPORT_FD: i32 = cluster_node::worker::REPORT_FD;

/// Compiles kernel objects in `offload __compile-object` processes of one program.
#[derive(Clone, Debug)]
pub struct CompilerProcess {
    program: PathBuf,
    faults: Vec<String>,
}

impl CompilerProcess {
    /// Helpers started from `program` (an `offload` of this version, as
    /// [`crate::Options::isolated`] takes), passed the test-build faults `faults`.
    pub fn new(program: impl Into<PathBuf>, faults: &[String]) -> CompilerProcess {
        CompilerProcess {
            program: program.into(),
            faults: faults.to_vec(),
        }
    }
}

/// The helper's arguments for one compile (after `__compile-object`).
fn helper_args(kernel: &str, target: &HostTarget, opt: OptLevel, tuning: &Tuning) -> Vec<String> {
    let mut args = vec![
        "--kernel".to_string(),
        kernel.to_string(),
        "--opt-level".into(),
        opt_level_number(opt).into(),
        "--triple".into(),
        target.triple.clone(),
        "--cpu".into(),
        target.cpu.clone(),
        // `=`: a feature string starts with `+` or `-`.
        format!("--features={}", target.features),
    ];
    if let Some(width) = tuning.prefer_vector_width {
        args.push(format!("--vector-width={width}"));
    }
    let switch = |on: bool| if on { "on" } else { "off" };
    if let Some(unroll) = tuning.unroll {
        args.push(format!("--unroll={}", switch(unroll)));
    }
    if let Some(search) = tuning.library_search {
        args.push(format!("--library-search={}", switch(search)));
    }
    if let Some(pipeline) = tuning.pipeline {
        args.push(format!(
            "--pipeline={}",
            match pipeline {
                Pipeline::PostLink => "post-link",
                Pipeline::PerModule => "per-module",
            }
        ));
    }
    args
}

fn opt_level_number(opt: OptLevel) -> &'static str {
    match opt {
        OptLevel::O0 => "0",
        OptLevel::O1 => "1",
        OptLevel::O2 => "2",
        OptLevel::O3 => "3",
    }
}

impl ObjectCompiler for CompilerProcess {
    fn compile_object(
        &self,
        package: &Package,
        kernel: &str,
        target: &HostTarget,
        opt: OptLevel,
        tuning: &Tuning,
    ) -> Result<KernelObject, JitError> {
        let failed = |how: String| {
            JitError::Compiler(format!("the compiler process for kernel `{kernel}` {how}"))
        };
        let mut command = Command::new(&self.program);
        std::os::unix::process::CommandExt::arg0(&mut command, "offload");
        command
            .arg("__compile-object")
            .args(helper_args(kernel, target, opt, tuning));
        for fault in &self.faults {
            command.arg(format!("--fault={fault}"));
        }
        let cannot_start =
            |e: std::io::Error| failed(format!("cannot start ({}: {e})", self.program.display()));
        // The sandbox reports a forbidden call by name on this pipe, as a worker's does.
        let (report, writer) = sandbox::report_pipe().map_err(cannot_start)?;
        let hook = sandbox::report_fd_hook(writer.as_raw_fd(), REPORT_FD);
        // SAFETY: the hook only calls dup2/fcntl on a descriptor open until spawn returns.
        unsafe { std::os::unix::process::CommandExt::pre_exec(&mut command, hook) };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(cannot_start)?;
        drop(writer);
        // The package goes in on a thread of its own: a helper that fails early stops
        // reading, and its output must still be read meanwhile.
        let mut stdin = child.stdin.take();
        let bytes = package.as_bytes().to_vec();
        let feeder = std::thread::Builder::new()
            .name("offload-compile-feed".into())
            .spawn(move || {
                if let Some(stdin) = stdin.as_mut() {
                    // A helper that ended early closed its end: its exit says why.
                    let _ = stdin.write_all(&bytes);
                }
            });
        let feeder = match feeder {
            Ok(feeder) => feeder,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("cannot be fed the package ({e})")));
            }
        };
        let output = child
            .wait_with_output()
            .map_err(|e| failed(format!("cannot be waited for ({e})")))?;
        let _ = feeder.join();
        if output.status.success() {
            return match output.stdout.split_first() {
                Some((&needs, bytes)) if needs < 4 => Ok(KernelObject {
                    bytes: bytes.to_vec(),
                    needs: LinkNeeds {
                        libm: needs & 1 != 0,
                        libgcc: needs & 2 != 0,
                    },
                }),
                _ => Err(failed("answered no object file".to_string())),
            };
        }
        let said = String::from_utf8_lossy(&output.stderr);
        let said = said.trim().trim_start_matches("error: ");
        let fault = sandbox::Fault::first_in(&sandbox::read_report(Some(report)));
        let end = sandbox::WorkerEnd::from_status(output.status, fault);
        match end {
            // The helper's own error (LLVM refused the module, a bad request).
            sandbox::WorkerEnd::Exited(1) if !said.is_empty() => {
                Err(JitError::Compiler(said.to_string()))
            }
            sandbox::WorkerEnd::Exited(_) => Err(failed(format!("{end}: {said}"))),
            _ => Err(failed(format!(
                "crashed: {end}; the kernel's bitcode may be one LLVM cannot compile"
            ))),
        }
    }
}

/// `offload __compile-object ARGS`: reads a package on stdin, compiles the kernel the
/// arguments name and writes its object file to stdout (see the module's doc).
pub fn serve_compile_object(args: impl Iterator<Item = String>) -> ExitCode {
    // SAFETY: a plain prctl call on this process.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    match compile_request(args) {
        Ok(object) => {
            let needs = u8::from(object.needs.libm) | (u8::from(object.needs.libgcc) << 1);
            let mut out = std::io::stdout().lock();
            match out
                .write_all(&[needs])
                .and_then(|()| out.write_all(&object.bytes))
                .and_then(|()| out.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot hand the object file back: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What one `__compile-object` is asked to do.
#[derive(Debug, PartialEq)]
struct Request {
    kernel: String,
    opt: OptLevel,
    target: HostTarget,
    tuning: Tuning,
    faults: Vec<String>,
}

/// Reads [`helper_args`] back; `target` is this machine's, which they override.
fn parse_request(
    args: impl Iterator<Item = String>,
    mut target: HostTarget,
) -> Result<Request, String> {
    let mut kernel = None;
    let mut opt = OptLevel::O3;
    let mut tuning = Tuning::default();
    let mut faults = Vec::new();
    let switch = |value: &str, flag: &str| match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{flag} takes on or off, not `{value}`")),
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--kernel" => kernel = Some(value()?),
            "--opt-level" => {
                let text = value()?;
                opt = OptLevel::parse(&text)
                    .ok_or_else(|| format!("`{text}` is not an optimization level"))?;
            }
            "--triple" => target.triple = value()?,
            "--cpu" => target.cpu = value()?,
            "--features" => target.features = value()?,
            "--vector-width" => {
                let text = value()?;
                tuning.prefer_vector_width = Some(
                    text.parse()
                        .map_err(|_| format!("`{text}` is not a vector width"))?,
                );
            }
            "--unroll" => tuning.unroll = Some(switch(&value()?, "--unroll")?),
            "--library-search" => {
                tuning.library_search = Some(switch(&value()?, "--library-search")?)
            }
            "--pipeline" => {
                tuning.pipeline = Some(match value()?.as_str() {
                    "post-link" => Pipeline::PostLink,
                    "per-module" => Pipeline::PerModule,
                    other => return Err(format!("unknown pipeline `{other}`")),
                })
            }
            "--fault" => faults.push(value()?),
            other => {
                return Err(format!(
                    "offload __compile-object does not take {other} (it is started by offload run)"
                ))
            }
        }
    }
    Ok(Request {
        kernel: kernel
            .ok_or("offload __compile-object needs --kernel (it is started by offload run)")?,
        opt,
        target,
        tuning,
        faults,
    })
}

/// Closes every descriptor but stdin, stdout, stderr and the report pipe (the sandbox
/// keeps what is open).
fn close_stray_descriptors() {
    cluster_node::worker::close_stray_descriptors(&[REPORT_FD]);
}

fn compile_request(args: impl Iterator<Item = String>) -> Result<KernelObject, String> {
    let request = parse_request(args, HostTarget::detect())?;
    let faults = cluster_node::fault::Faults::parse(&request.faults)?;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the package: {e}"))?;
    let package = Package::from_bytes(&bytes).map_err(|e| e.to_string())?;
    // LLVM is loaded and set up (above, for the host's target): from here on the helper
    // needs no file and no new process, so it compiles confined as a kernel worker is.
    close_stray_descriptors();
    // LLVM asks `sysinfo` for the machine's memory (the CPU profile has no reason to).
    sandbox::apply(
        &sandbox::Config::cpu()
            .allow_syscall("sysinfo")
            .report_fd(REPORT_FD),
    )
    .map_err(|e| format!("cannot apply the compiler's sandbox: {e}"))?;
    faults.before_compile();
    node_jit::compile_entry_object(
        &package,
        &request.kernel,
        &request.target,
        request.opt,
        &request.tuning,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_generation_setting_reaches_the_helper() {
        let version = ir_packager::LlvmVersion {
            major: 22,
            minor: 1,
            patch: 8,
        };
        let here = HostTarget {
            triple: "x86_64-unknown-linux-gnu".into(),
            cpu: "generic".into(),
            features: String::new(),
            llvm_version: version,
        };
        let target = HostTarget {
            triple: "x86_64-unknown-linux-gnu".into(),
            cpu: "znver5".into(),
            features: "+avx512f,-avx10.1".into(),
            llvm_version: version,
        };
        let tunings = [
            Tuning::default(),
            Tuning {
                prefer_vector_width: Some(256),
                unroll: Some(false),
                library_search: Some(true),
                pipeline: Some(Pipeline::PerModule),
            },
            Tuning {
                prefer_vector_width: None,
                unroll: Some(true),
                library_search: Some(false),
                pipeline: Some(Pipeline::PostLink),
            },
        ];
        for (tuning, opt) in tunings
            .into_iter()
            .zip([OptLevel::O3, OptLevel::O2, OptLevel::O0])
        {
            let mut args = helper_args("saxpy", &target, opt, &tuning);
            args.push("--fault=compiler-abort".into());
            let request = parse_request(args.into_iter(), here.clone()).expect("parses");
            assert_eq!(
                request,
                Request {
                    kernel: "saxpy".into(),
                    opt,
                    target: target.clone(),
                    tuning,
                    faults: vec!["compiler-abort".into()],
                }
            );
        }
        let refused = |args: &[&str]| {
            parse_request(args.iter().map(|a| a.to_string()), here.clone()).expect_err("refused")
        };
        assert!(refused(&["--opt-level", "4", "--kernel", "k"]).contains("`4`"));
        assert!(refused(&["--unroll=maybe", "--kernel", "k"]).contains("on or off"));
        assert!(refused(&["--cpu"]).contains("--cpu needs a value"));
        assert!(refused(&["--opt-level", "2"]).contains("needs --kernel"));
        assert!(refused(&["--kernel", "k", "--link"]).contains("does not take --link"));
    }
}
