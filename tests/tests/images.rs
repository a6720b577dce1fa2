//! The container images: `sidecar/Dockerfile` and `webhook/Dockerfile` build static musl binaries
//! onto a distroless (or scratch) base and run them as the non-root UID the chart gives them.
//!
//! Verified here, from the Dockerfiles' own text (so the test and the files cannot drift apart):
//! * the final stage's base is `scratch` or distroless `static`, its `USER` is a numeric, non-root
//!   UID and GID equal to the chart's (`sidecar.uid` in values.yaml; the webhook Deployment's
//!   `runAsUser` / `runAsGroup`), and its `ENTRYPOINT` is the binary the stage copies, installed
//!   in a directory of the default `PATH` (the injected sidecar's postStart hook calls
//!   `mcp-guard-sidecar` by name);
//! * the build stage's `cargo build` command, run as written (with the stage's `ENV`) from the
//!   workspace root, succeeds here; the binary it leaves where the final stage copies from is a
//!   static ELF (no program interpreter, no shared library needed) that runs with an empty
//!   environment: `--version` and the subcommand the chart or the injector starts. It carries no
//!   debug info (about 22 MB rather than 80) but keeps its symbol table, and its relocations are
//!   packed (`.relr.dyn`);
//! * the build stage copies what that build reads at the workspace root: the manifest, the lock
//!   file, the build settings in `.cargo/` (the musl build's allocator and linker settings) and
//!   the members.
//!
//! Not verified: no image is built, as no Docker engine runs on the machines the tests run on.
//! The build stage's `apt-get install musl-tools` and `rustup target add` are mirrored by
//! `tests/scripts/install-musl.sh` (the same rustc 1.95 and Debian bookworm musl-tools as the
//! `rust:1.95-bookworm` base), not run from the Dockerfile; the `COPY` itself, the base
//! image's contents and the image's start under a container runtime are taken on trust.
//!
//! Cost: the release build of both binaries takes about 7.5 minutes from cold on 2 cores (both
//! Dockerfiles run the same command, so it runs once); after a change to the sidecar, about 3.
//! Without the musl target and `x86_64-linux-musl-gcc` the build test is skipped, unless
//! `MCP_GUARD_REQUIRE_MUSL` is set (tests/run.sh sets it after installing them): then it fails.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcp_guard_tests::{Output, run_bounded, target_dir, workspace_root};

/// Each image's Dockerfile, the binary it ships, and the subcommand its users start (the chart's
/// webhook Deployment runs `serve`; the injector's postStart hook runs `wait-started`).
const IMAGES: [(&str, &str, &str); 2] = [
    ("sidecar/Dockerfile", "mcp-guard-sidecar", "wait-started"),
    ("webhook/Dockerfile", "mcp-guard-webhook", "serve"),
];

/// The `PATH` distroless images set, and the one container runtimes give an image that sets none.
const DEFAULT_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Far above the 7.5 minutes a cold release build of both binaries takes on 2 cores.
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

// ---------------------------------------------------------------------------------------------
// Dockerfiles
// ---------------------------------------------------------------------------------------------

/// One instruction: its keyword in upper case and its arguments, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn args(&self, keyword: &'static str) -> impl Iterator<Item = &str> {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
            .map(|i| i.args.as_str())
    }

    /// The only instruction `keyword` of the stage.
    fn single(&self, keyword: &'static str, dockerfile: &str) -> &str {
        let all: Vec<&str> = self.args(keyword).collect();
        assert_eq!(
            all.len(),
            1,
            "{dockerfile}: one {keyword} expected: {all:?}"
        );
        all[0]
    }
}

/// A Dockerfile's stages, enough of the syntax for ours: comments, `\` continuations,
/// `FROM image [AS name]`, and the other instructions kept as text.
fn stages(dockerfile: &str) -> Vec<Stage> {
    let text = fs::read_to_string(workspace_root().join(dockerfile)).unwrap();
    let mut stages: Vec<Stage> = Vec::new();
    let mut logical = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let instruction = std::mem::take(&mut logical);
        let (keyword, args) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((&instruction, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_string();
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_] => None,
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => panic!("{dockerfile}: cannot read FROM {args}"),
            };
            stages.push(Stage {
                base: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("{dockerfile}: {keyword} before FROM"))
                .instructions
                .push(Instruction { keyword, args });
        }
    }
    assert!(
        logical.is_empty(),
        "{dockerfile} ends inside a continued line"
    );
    stages
}

/// The build stage's `cargo build` command: its arguments after `cargo`, and the stage's `ENV`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CargoBuild {
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl CargoBuild {
    /// Every value given to `flag` (`--flag value` or `--flag=value`).
    fn values(&self, flag: &str) -> Vec<&str> {
        let prefixed = format!("{flag}=");
        let mut out = Vec::new();
        for (i, arg) in self.args.iter().enumerate() {
            if arg == flag {
                out.extend(self.args.get(i + 1).map(String::as_str));
            } else if let Some(v) = arg.strip_prefix(&prefixed) {
                out.push(v);
            }
        }
        out
    }

    fn target(&self) -> &str {
        let targets = self.values("--target");
        assert_eq!(targets.len(), 1, "one --target expected: {self:?}");
        targets[0]
    }
}

impl std::fmt::Display for CargoBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={v} ")?;
        }
        write!(f, "cargo {}", self.args.join(" "))
    }
}

/// What a Dockerfile says about its image.
#[derive(Debug)]
struct Image {
    dockerfile: &'static str,
    binary: &'static str,
    subcommand: &'static str,
    /// The final stage's base image.
    base: String,
    build: CargoBuild,
    /// What the build stage copies from the build context (the workspace root).
    copied: Vec<String>,
    /// Where the build stage leaves the binary, relative to the workspace root.
    built_at: String,
    /// Where the final stage puts it.
    installed_at: String,
    user: String,
    entrypoint: Vec<String>,
}

impl Image {
    fn read(dockerfile: &'static str, binary: &'static str, subcommand: &'static str) -> Image {
        let stages = stages(dockerfile);
        let last = stages
            .last()
            .unwrap_or_else(|| panic!("{dockerfile}: no FROM"));
        let copy = last.single("COPY", dockerfile);
        let [from, source, dest] = copy.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("{dockerfile}: expected `COPY --from=<stage> <built> <installed>`: {copy}")
        };
        let from = from
            .strip_prefix("--from=")
            .unwrap_or_else(|| panic!("{dockerfile}: the final stage copies from no stage"));
        let build_stage = stages
            .iter()
            .find(|s| s.name.as_deref() == Some(from))
            .unwrap_or_else(|| panic!("{dockerfile}: no stage named {from}"));
        let workdir = build_stage.args("WORKDIR").last().unwrap_or("/");
        let built_at = source
            .strip_prefix(workdir)
            .map(|s| s.trim_start_matches('/'))
            .unwrap_or_else(|| panic!("{dockerfile}: {source} is outside WORKDIR {workdir}"));

        let env = build_stage
            .args("ENV")
            .flat_map(str::split_whitespace)
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{dockerfile}: ENV {kv}: only KEY=VALUE is read"));
                (k.to_string(), v.to_string())
            })
            .collect();
        let commands: Vec<&str> = build_stage
            .args("RUN")
            .flat_map(|run| run.split("&&"))
            .map(str::trim)
            .filter(|c| c.starts_with("cargo build"))
            .collect();
        let [command] = commands[..] else {
            panic!("{dockerfile}: one `cargo build` expected in the build stage: {commands:?}")
        };
        assert!(
            !command.contains(['"', '\'', '$', '`', ';', '|', '>']),
            "{dockerfile}: the test runs `{command}` without a shell; keep it plain words"
        );
        let build = CargoBuild {
            env,
            args: command
                .split_whitespace()
                .skip(1)
                .map(String::from)
                .collect(),
        };
        let copied = build_stage
            .args("COPY")
            .filter(|c| !c.starts_with("--from"))
            .flat_map(|c| {
                let words: Vec<&str> = c.split_whitespace().collect();
                let sources = &words[..words.len().saturating_sub(1)];
                sources
                    .iter()
                    .map(|w| w.trim_end_matches('/').to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let entrypoint = last.single("ENTRYPOINT", dockerfile);
        Image {
            dockerfile,
            binary,
            subcommand,
            base: last.base.clone(),
            build,
            copied,
            built_at: built_at.to_string(),
            installed_at: dest.to_string(),
            user: last.single("USER", dockerfile).to_string(),
            entrypoint: serde_json::from_str(entrypoint).unwrap_or_else(|e| {
                panic!("{dockerfile}: ENTRYPOINT {entrypoint} is not the exec (JSON) form: {e}")
            }),
        }
    }

    /// The built binary on this machine (`target/` is cargo's target directory here).
    fn built_binary(&self) -> PathBuf {
        let under_target = self.built_at.strip_prefix("target/").unwrap_or_else(|| {
            panic!(
                "{}: the binary is copied from {}, not from the build's target/",
                self.dockerfile, self.built_at
            )
        });
        target_dir().join(under_target)
    }
}

/// The top-level directories of the workspace's members, as `cargo metadata` lists them.
fn member_dirs() -> Vec<String> {
    let out = run_bounded(
        "cargo metadata",
        Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(workspace_root()),
        Duration::from_secs(120),
    );
    assert!(out.success(), "cargo metadata failed: {}", out.stderr);
    let meta: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let root = workspace_root();
    let mut dirs: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["manifest_path"].as_str())
        .filter_map(|m| {
            let rel = Path::new(m).strip_prefix(&root).ok()?;
            Some(rel.components().next()?.as_os_str().to_str()?.to_owned())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    assert!(
        !dirs.is_empty(),
        "no workspace member under {}",
        root.display()
    );
    dirs
}

fn images() -> Vec<Image> {
    IMAGES
        .iter()
        .map(|&(dockerfile, binary, subcommand)| Image::read(dockerfile, binary, subcommand))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The chart
// ---------------------------------------------------------------------------------------------

fn chart_file(path: &str) -> String {
    fs::read_to_string(workspace_root().join("charts/mcp-guard").join(path)).unwrap()
}

/// `section.key` of the chart's values.yaml (a scalar two spaces into a top-level map).
fn chart_value(section: &str, key: &str) -> String {
    let values = chart_file("values.yaml");
    let mut in_section = false;
    for line in values.lines() {
        if !line.starts_with([' ', '#']) && !line.trim().is_empty() {
            in_section = line.trim_end() == format!("{section}:");
        } else if in_section
            && let Some(value) = line
                .strip_prefix("  ")
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(':'))
        {
            return value.split('#').next().unwrap_or("").trim().to_string();
        }
    }
    panic!("values.yaml has no {section}.{key}")
}

/// The one value every `field:` of the webhook Deployment's security contexts has.
fn deployment_id(field: &str) -> String {
    let deployment = chart_file("templates/deployment.yaml");
    let mut values: Vec<&str> = deployment
        .lines()
        .filter_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
        .collect();
    values.dedup();
    let [value] = values[..] else {
        panic!("the webhook Deployment should set one {field}: {values:?}")
    };
    value.to_string()
}

/// The `uid:gid` the chart runs each binary as (the injector runs the sidecar as
/// `sidecar.uid` for both: webhook/src/inject.rs).
fn chart_user(binary: &str) -> String {
    match binary {
        "mcp-guard-sidecar" => {
            let uid = chart_value("sidecar", "uid");
            format!("{uid}:{uid}")
        }
        "mcp-guard-webhook" => format!(
            "{}:{}",
            deployment_id("runAsUser"),
            deployment_id("runAsGroup")
        ),
        other => panic!("no chart user known for {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The little-endian unsigned integer of `width` bytes at `offset` of an ELF file.
fn le(elf: &[u8], offset: usize, width: usize) -> usize {
    let mut bytes = [0u8; 8];
    bytes[..width].copy_from_slice(&elf[offset..offset + width]);
    usize::try_from(u64::from_le_bytes(bytes)).unwrap()
}

/// The program interpreter (PT_INTERP) and the shared libraries (DT_NEEDED entries) a 64-bit
/// little-endian x86-64 ELF executable asks for: both empty for a binary that runs on an image
/// with no libc and no loader.
fn elf_dependencies(elf: &[u8]) -> (Option<String>, usize) {
    let (u16_at, u32_at, u64_at) = (|o| le(elf, o, 2), |o| le(elf, o, 4), |o| le(elf, o, 8));
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "not a 64-bit little-endian ELF");
    assert_eq!(u16_at(18), 62, "not an x86-64 ELF");
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    let mut interpreter = None;
    let mut needed = 0;
    for ph in (0..phnum).map(|i| phoff + i * phentsize) {
        let (offset, size) = (u64_at(ph + 8), u64_at(ph + 32));
        match u32_at(ph) {
            // PT_INTERP: the loader's path, NUL-terminated.
            3 => {
                let path = &elf[offset..offset + size];
                interpreter = Some(String::from_utf8_lossy(path).trim_end_matches('\0').into());
            }
            // PT_DYNAMIC: (tag, value) pairs up to DT_NULL; DT_NEEDED (1) names a library.
            2 => {
                needed += elf[offset..offset + size]
                    .chunks_exact(16)
                    .map(|entry| u64::from_le_bytes(entry[..8].try_into().unwrap()))
                    .take_while(|&tag| tag != 0)
                    .filter(|&tag| tag == 1)
                    .count();
            }
            _ => {}
        }
    }
    (interpreter, needed)
}

/// The names of an x86-64 ELF file's sections (from the section header table and its string
/// table).
fn elf_section_names(elf: &[u8]) -> Vec<String> {
    let (u16_at, u32_at, u64_at) = (|o| le(elf, o, 2), |o| le(elf, o, 4), |o| le(elf, o, 8));
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(40), u16_at(58), u16_at(60), u16_at(62));
    let header = |i: usize| shoff + i * shentsize;
    let strings = u64_at(header(shstrndx) + 24);
    (0..shnum)
        .map(|i| {
            let name = &elf[strings + u32_at(header(i))..];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect()
}

/// Runs a built binary as a container would: empty environment, working directory `/`.
fn run_alone(binary: &Path, args: &[&str]) -> Output {
    let out = run_bounded(
        "image-binary",
        Command::new(binary).args(args).env_clear().current_dir("/"),
        Duration::from_secs(30),
    );
    assert!(
        out.success(),
        "{} {args:?} failed ({:?}):\n{}\n{}",
        binary.display(),
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// `Err` names what is missing of the musl target's toolchain (tests/scripts/install-musl.sh).
fn musl_toolchain(triple: &str) -> Result<(), String> {
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", triple])
        .output()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .map_err(|e| format!("rustc: {e}"))?;
    let has_std = fs::read_dir(&libdir)
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
        .unwrap_or(false);
    if !has_std {
        return Err(format!(
            "no standard library for {triple} in {}",
            libdir.display()
        ));
    }
    let arch = triple.split('-').next().unwrap_or(triple);
    let gcc = format!("{arch}-linux-musl-gcc");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|dir| dir.join(&gcc).is_file()) {
        return Err(format!("no {gcc} on PATH (Debian musl-tools)"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// What each Dockerfile promises, read without building: a static musl release build, a
/// distroless or scratch base, the chart's non-root UID, and an entrypoint that is the copied
/// binary, found by name on the default PATH.
#[test]
fn dockerfiles_describe_static_nonroot_images() {
    for image in images() {
        let (dockerfile, binary) = (image.dockerfile, image.binary);
        let build = &image.build;
        assert!(
            build.args.first().is_some_and(|a| a == "build")
                && build.values("--bin").contains(&binary)
                && ["--release", "--locked"]
                    .iter()
                    .all(|flag| build.args.iter().any(|a| a == flag)),
            "{dockerfile}: expected `cargo build --release --locked ... --bin {binary}`: {build}"
        );
        let target = build.target();
        assert!(
            target.ends_with("-linux-musl"),
            "{dockerfile}: a static build targets musl, not {target}"
        );
        assert_eq!(
            image.built_at,
            format!("target/{target}/release/{binary}"),
            "{dockerfile}: the final stage copies what `{build}` builds"
        );

        // What cargo reads at the workspace root: the manifest, the lock file, the build
        // settings (.cargo/config.toml: the allocator's settings of the musl build) and the
        // members' directories.
        let mut needed: Vec<String> = ["Cargo.toml", "Cargo.lock", ".cargo"]
            .iter()
            .filter(|p| workspace_root().join(p).exists())
            .map(|p| p.to_string())
            .collect();
        needed.extend(member_dirs());
        for path in &needed {
            assert!(
                image.copied.iter().any(|c| c == path),
                "{dockerfile}: the build stage does not copy {path} (copies {:?}); the build \
                 reads it",
                image.copied
            );
        }

        let base = &image.base;
        assert!(
            base == "scratch" || base.starts_with("gcr.io/distroless/static"),
            "{dockerfile}: the final stage is built on {base}, not on distroless static or scratch"
        );

        assert_eq!(
            image.entrypoint.first(),
            Some(&image.installed_at),
            "{dockerfile}: ENTRYPOINT starts the binary the final stage copies"
        );
        let installed = Path::new(&image.installed_at);
        assert_eq!(installed.file_name(), Some(binary.as_ref()), "{dockerfile}");
        let dir = installed.parent().and_then(Path::to_str).unwrap_or("");
        assert!(
            DEFAULT_PATH.contains(&dir),
            "{dockerfile}: {binary} is installed in {dir}, not on the default PATH"
        );

        let user = &image.user;
        let ids: Vec<u32> = user
            .split(':')
            .map(|id| {
                id.parse().unwrap_or_else(|_| {
                    panic!("{dockerfile}: USER {user}: numeric IDs, so runAsNonRoot can check them")
                })
            })
            .collect();
        assert!(
            ids.len() == 2 && ids.iter().all(|&id| id != 0),
            "{dockerfile}: USER {user} is a non-root uid:gid"
        );
        assert_eq!(
            user,
            &chart_user(binary),
            "{dockerfile}: the image's USER is the uid:gid the chart runs {binary} as"
        );
    }
}

/// The build stage's `cargo build`, run as written: each binary is a static executable where the
/// final stage copies it from, and runs with nothing around it.
#[test]
fn static_builds_need_no_loader_and_run() {
    let images = images();
    let mut builds: Vec<&CargoBuild> = Vec::new();
    for image in &images {
        if !builds.contains(&&image.build) {
            builds.push(&image.build);
        }
    }
    for build in &builds {
        if let Err(missing) = musl_toolchain(build.target()) {
            assert!(
                std::env::var_os("MCP_GUARD_REQUIRE_MUSL").is_none(),
                "{missing}: run tests/scripts/install-musl.sh"
            );
            eprintln!("images: {missing}; static builds skipped (tests/scripts/install-musl.sh)");
            return;
        }
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for build in builds {
        let out = run_bounded(
            "cargo-build-static",
            Command::new(&cargo)
                .args(&build.args)
                .envs(build.env.iter().map(|(k, v)| (k, v)))
                .current_dir(workspace_root()),
            BUILD_TIMEOUT,
        );
        let lines: Vec<&str> = out.stderr.lines().collect();
        let stderr = lines[lines.len().saturating_sub(60)..].join("\n");
        assert!(
            out.success(),
            "`{build}` failed ({:?}) after {:.0?}:\n{stderr}",
            out.status,
            out.elapsed
        );
        eprintln!("images: `{build}` took {:.0?}", out.elapsed);
    }

    for image in &images {
        let binary = image.built_binary();
        let elf = fs::read(&binary)
            .unwrap_or_else(|e| panic!("{}: {} ({e})", image.dockerfile, binary.display()));
        assert_eq!(
            elf_dependencies(&elf),
            (None, 0),
            "{}: {} needs a loader or shared libraries",
            image.dockerfile,
            binary.display()
        );
        // Shipped without debug info (the build stage's CARGO_PROFILE_RELEASE_STRIP), which
        // would make the image about four times larger; with its symbols, so backtraces name
        // functions.
        let sections = elf_section_names(&elf);
        let debug: Vec<&String> = sections
            .iter()
            // DWARF; `.debug_gdb_scripts` is a few bytes naming gdb's pretty-printers, no DWARF.
            .filter(|s| s.starts_with(".debug_") && *s != ".debug_gdb_scripts")
            .collect();
        assert!(
            debug.is_empty(),
            "{}: {} carries debug info {debug:?} ({:.0} MiB); strip it in the build stage",
            image.dockerfile,
            binary.display(),
            elf.len() as f64 / 1048576.0
        );
        assert!(
            sections.iter().any(|s| s == ".symtab"),
            "{}: {} has no symbol table, so a backtrace would name no function",
            image.dockerfile,
            binary.display()
        );
        // Position-independent (ASLR), its relative relocations packed (RELR, the musl target's
        // rustflags in .cargo/config.toml): `.rela.dyn` would hold about a megabyte, every page
        // of it read at start and resident in every sidecar.
        assert!(
            sections.iter().any(|s| s == ".relr.dyn"),
            "{}: {} has no packed relocations (.relr.dyn) among {sections:?}: was .cargo/config.toml's \
             musl rustflags replaced (RUSTFLAGS)?",
            image.dockerfile,
            binary.display()
        );
        let version = run_alone(&binary, &["--version"]);
        assert_eq!(
            version.stdout.trim(),
            format!("{} {}", image.binary, env!("CARGO_PKG_VERSION")),
            "{}",
            image.dockerfile
        );
        run_alone(&binary, &[image.subcommand, "--help"]);
    }
}

/// The section reader on a binary known to carry debug info: this test's own (a debug build), so
/// the strip check above can tell a stripped binary from one that is not.
#[test]
fn section_names_show_debug_info_where_there_is_some() {
    let elf = fs::read(std::env::current_exe().unwrap()).unwrap();
    let sections = elf_section_names(&elf);
    for name in [".text", ".symtab", ".debug_info", ".debug_line"] {
        assert!(
            sections.iter().any(|s| s == name),
            "{name} not found among {sections:?}"
        );
    }
}
