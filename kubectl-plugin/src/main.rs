//! `kubectl-embeddingrollout`: EmbeddingRollouts for people at a terminal. Runs standalone, as
//! `kubectl embeddingrollout` (kubectl finds it on PATH) and, through a symlink named
//! `kubectl-erollout`, as `kubectl erollout`.

mod error;
mod manual;
mod render;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use embedding_rollout_operator::crd::{
    EmbeddingRollout, EmbeddingRolloutAnalysis, COMMAND_ANNOTATION, HISTORY_LIMIT, ROLLOUT_LABEL,
};
use embedding_rollout_operator::decision::Command;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use serde_json::{json, Value};

use error::{chain, PluginError, EXIT_CODES_HELP};

/// Who wrote the last command (the SelfSubjectReview's user name, or `unknown`).
const COMMAND_BY_ANNOTATION: &str = "rollout.akidb.io/command-by";
/// When the last command was written (RFC 3339, UTC).
const COMMAND_AT_ANNOTATION: &str = "rollout.akidb.io/command-at";
const FIELD_MANAGER: &str = "kubectl-embeddingrollout";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-embeddingrollout",
    version,
    about = "Inspect and steer EmbeddingRollouts (rollout.akidb.io/v1alpha1).",
    long_about = "Inspect and steer EmbeddingRollouts (rollout.akidb.io/v1alpha1).\n\n\
        Also runs as `kubectl embeddingrollout` and, through a symlink named kubectl-erollout, as \
        `kubectl erollout`. The cluster comes from --kubeconfig, else $KUBECONFIG, else \
        ~/.kube/config (or the in-cluster service account).",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// Path of the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Every rollout in the namespace: phase, step, weight, candidate, verdict, age, message.
    List {
        /// Rollouts of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// One rollout, with the gates of its last analysis.
    Get {
        name: String,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Follow one rollout live until it is Promoted, Decommissioned, RolledBack or Failed.
    Watch {
        name: String,
        /// Give up after this long (e.g. `30s`, `10m`, `2h`), with exit code 8.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Every analysis of the rollout, oldest first (its EmbeddingRolloutAnalysis objects; without
    /// them, the last ten in the status), then the manual commands.
    History { name: String },
    /// Next step now, without soak or analysis (at the last step: promote).
    Promote {
        name: String,
        /// Straight to promotion (promote-full), whatever the step.
        #[arg(long)]
        full: bool,
        /// Send it even if the phase says it makes no sense.
        #[arg(long)]
        force: bool,
    },
    /// Roll back now: all traffic to the baseline.
    Abort {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Hold the current weight (analysis and rollback triggers keep running).
    Pause {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Clear a pause command.
    Resume {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Start a new rollout from step 1 after RolledBack or Failed.
    Retry {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Shell completion script, e.g. `source <(kubectl-embeddingrollout completion bash)`.
    Completion { shell: Shell },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    embedding_rollout_operator::duration::parse(s).map_err(|e| e.to_string())
}

fn main() {
    // The name it was started under, so help and completion say `kubectl-erollout` when run
    // through the alias symlink.
    let bin_name = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "kubectl-embeddingrollout".into());
    let matches = Cli::command().bin_name(&bin_name).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The operator library links reqwest 0.13 (aws-lc-rs) next to kube's ring: without a choice
    // rustls panics at the first TLS connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(error::exit::OTHER);
        }
    };
    let code = match runtime.block_on(run(cli, &bin_name)) {
        Ok(()) => error::exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) -> Result<(), PluginError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(PluginError::Other(format!("writing to stdout: {e}"))),
    }
}

async fn run(cli: Cli, bin_name: &str) -> Result<(), PluginError> {
    if let Sub::Completion { shell } = cli.command {
        let mut cmd = Cli::command();
        let mut buf = Vec::new();
        match shell {
            Shell::Bash => {
                clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, bin_name, &mut buf)
            }
            Shell::Zsh => {
                clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, bin_name, &mut buf)
            }
            Shell::Fish => {
                clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, bin_name, &mut buf)
            }
        }
        return out(&String::from_utf8_lossy(&buf));
    }
    let ctx = Ctx::connect(&cli).await?;
    match cli.command {
        Sub::List {
            all_namespaces,
            output,
        } => list(&ctx, all_namespaces, output).await,
        Sub::Get { name, output } => get(&ctx, &name, output).await,
        Sub::Watch { name, timeout } => watch(&ctx, &name, timeout).await,
        Sub::History { name } => {
            let (_, r) = ctx.get(&name).await?;
            let kept = match ctx.kept_analyses(&name).await {
                Ok(kept) => kept,
                Err(why) => {
                    eprintln!(
                        "warning: {why}; showing status.history (the last {HISTORY_LIMIT} analyses)"
                    );
                    Vec::new()
                }
            };
            eprintln!("{}", render::history_source(&r, &kept));
            out(&render::history_table(&r, &kept))
        }
        Sub::Promote { name, full, force } => {
            let cmd = if full {
                Command::PromoteFull
            } else {
                Command::Promote
            };
            send(&ctx, &name, cmd, force).await
        }
        Sub::Abort { name, force } => send(&ctx, &name, Command::Abort, force).await,
        Sub::Pause { name, force } => send(&ctx, &name, Command::Pause, force).await,
        Sub::Resume { name, force } => send(&ctx, &name, Command::Resume, force).await,
        Sub::Retry { name, force } => send(&ctx, &name, Command::Retry, force).await,
        Sub::Completion { .. } => unreachable!("handled above"),
    }
}

/// A client for the chosen cluster and namespace, and how to explain its errors.
struct Ctx {
    client: Client,
    namespace: String,
    server: String,
}

impl Ctx {
    async fn connect(cli: &Cli) -> Result<Self, PluginError> {
        let options = KubeConfigOptions {
            context: cli.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &cli.kubeconfig {
            Some(path) => {
                let parsed = Kubeconfig::read_from(path).map_err(|e| {
                    PluginError::Config(format!("{}: {}", path.display(), chain(&e)))
                })?;
                Config::from_custom_kubeconfig(parsed, &options)
                    .await
                    .map_err(|e| {
                        PluginError::Config(format!("{}: {}", path.display(), chain(&e)))
                    })?
            }
            None if cli.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| PluginError::Config(chain(&e)))?,
            None => Config::infer()
                .await
                .map_err(|e| PluginError::Config(chain(&e)))?,
        };
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let namespace = cli
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| PluginError::Config(chain(&e)))?;
        Ok(Ctx {
            client,
            namespace,
            server,
        })
    }

    fn api(&self, all_namespaces: bool) -> Api<DynamicObject> {
        let resource = ApiResource::erase::<EmbeddingRollout>(&());
        if all_namespaces {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
        }
    }

    /// The object as stored (for `-o`) and decoded (for the tables).
    async fn get(&self, name: &str) -> Result<(Value, EmbeddingRollout), PluginError> {
        match self.api(false).get(name).await {
            Ok(obj) => decode(obj),
            Err(e) => Err(self.explain(e, "get", Some(name), false).await),
        }
    }

    /// A kube error in words: 403 names the verb, 404 tells a missing rollout from a missing CRD.
    async fn explain(
        &self,
        e: kube::Error,
        verb: &str,
        name: Option<&str>,
        all_namespaces: bool,
    ) -> PluginError {
        match e {
            kube::Error::Api(s) if s.code == 403 => PluginError::Forbidden {
                verb: verb.to_string(),
                scope: if all_namespaces {
                    "in any namespace".into()
                } else {
                    format!("in {}", self.namespace)
                },
                message: s.message,
            },
            kube::Error::Api(s) if s.code == 401 => PluginError::Unauthorized {
                server: self.server.clone(),
                message: s.message,
            },
            // Both a missing object and a missing resource type answer 404: discovery tells them apart.
            kube::Error::Api(s) if s.code == 404 => match self.crd_served().await {
                Ok(false) => PluginError::CrdMissing {
                    server: self.server.clone(),
                },
                Ok(true) => match name {
                    Some(name) => PluginError::NotFound {
                        name: name.to_string(),
                        namespace: self.namespace.clone(),
                    },
                    None => {
                        PluginError::Other(format!("the API server answered 404: {}", s.message))
                    }
                },
                Err(e) => self.plain(e),
            },
            other => self.plain(other),
        }
    }

    fn plain(&self, e: kube::Error) -> PluginError {
        match e {
            kube::Error::HyperError(_) | kube::Error::Service(_) => PluginError::Unreachable {
                server: self.server.clone(),
                detail: chain(&e),
            },
            kube::Error::Api(s) => PluginError::Other(format!(
                "the API server at {} answered {} {}: {}",
                self.server, s.code, s.reason, s.message
            )),
            other => PluginError::Other(chain(&other)),
        }
    }

    /// The rollout's EmbeddingRolloutAnalysis objects (every analysis it took), page by page.
    async fn kept_analyses(&self, rollout: &str) -> Result<Vec<EmbeddingRolloutAnalysis>, String> {
        let api: Api<EmbeddingRolloutAnalysis> =
            Api::namespaced(self.client.clone(), &self.namespace);
        // A full page of objects is a few MiB at most.
        let mut params = ListParams::default()
            .labels(&format!("{ROLLOUT_LABEL}={rollout}"))
            .limit(20);
        let mut kept = Vec::new();
        loop {
            let page = api.list(&params).await.map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => {
                    "the EmbeddingRolloutAnalysis CRD is not installed (kubectl apply --server-side -f crds/)"
                        .to_string()
                }
                kube::Error::Api(s) if s.code == 403 => format!(
                    "you may not list embeddingrolloutanalyses in {}: {}",
                    self.namespace, s.message
                ),
                other => format!("listing EmbeddingRolloutAnalyses: {}", chain(&other)),
            })?;
            kept.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(kept),
            }
        }
    }

    async fn crd_served(&self) -> Result<bool, kube::Error> {
        match self
            .client
            .list_api_group_resources("rollout.akidb.io/v1alpha1")
            .await
        {
            Ok(list) => Ok(list.resources.iter().any(|r| r.name == "embeddingrollouts")),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The user name the API server sees; `unknown` when SelfSubjectReview is unavailable
    /// (before Kubernetes 1.28, or forbidden), since the command itself must still go through.
    async fn whoami(&self) -> String {
        let reviews: Api<SelfSubjectReview> = Api::all(self.client.clone());
        match reviews
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
        {
            Ok(review) => review
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            Err(_) => "unknown".into(),
        }
    }
}

fn decode(obj: DynamicObject) -> Result<(Value, EmbeddingRollout), PluginError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let value = serde_json::to_value(&obj)
        .map_err(|e| PluginError::Other(format!("embeddingrollout {name}: {e}")))?;
    let typed = serde_json::from_value(value.clone()).map_err(|e| {
        PluginError::Other(format!(
            "embeddingrollout {name} does not decode as rollout.akidb.io/v1alpha1 (a newer or older CRD?): {e}"
        ))
    })?;
    Ok((value, typed))
}

fn print_objects(output: Output, value: &Value) -> Result<(), PluginError> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_yaml::to_string(value).map_err(|e| e.to_string()),
    }
    .map_err(PluginError::Other)?;
    out(&text)
}

async fn list(ctx: &Ctx, all_namespaces: bool, output: Option<Output>) -> Result<(), PluginError> {
    let list = match ctx.api(all_namespaces).list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => return Err(ctx.explain(e, "list", None, all_namespaces).await),
    };
    let mut values = Vec::new();
    let mut typed = Vec::new();
    for item in list.items {
        let (v, t) = decode(item)?;
        values.push(v);
        typed.push(t);
    }
    if let Some(output) = output {
        return print_objects(
            output,
            &json!({"apiVersion": "v1", "kind": "List", "items": values}),
        );
    }
    if typed.is_empty() {
        let scope = if all_namespaces {
            "any namespace".to_string()
        } else {
            format!("namespace {}", ctx.namespace)
        };
        eprintln!("No EmbeddingRollouts in {scope}.");
        return Ok(());
    }
    out(&render::list_table(&typed, all_namespaces, Utc::now()))
}

async fn get(ctx: &Ctx, name: &str, output: Option<Output>) -> Result<(), PluginError> {
    let (value, r) = ctx.get(name).await?;
    match output {
        Some(output) => print_objects(output, &value),
        None => out(&render::get_view(&r, Utc::now())),
    }
}

async fn watch(ctx: &Ctx, name: &str, timeout: Option<Duration>) -> Result<(), PluginError> {
    // A first get, so a missing rollout, CRD or permission is said plainly before watching.
    let (_, first) = ctx.get(name).await?;
    let tty = std::io::stdout().is_terminal();
    let mut screen = Screen { tty, last: None };
    screen.show(&first)?;
    if let Some(phase) = render::phase_of(&first).filter(|p| render::is_terminal(*p)) {
        eprintln!("{name} is {phase}: nothing more will happen without a command.");
        return Ok(());
    }
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(ctx.api(false), config).default_backoff().boxed();
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    // On a terminal the ages tick; redraw now and then even without a change.
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut current = first;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Err(PluginError::Interrupted),
            _ = &mut deadline => {
                return Err(PluginError::Timeout {
                    name: name.to_string(),
                    phase: render::phase_of(&current).map(|p| p.to_string()).unwrap_or_else(|| "without status".into()),
                    after: embedding_rollout_operator::duration::format(timeout.unwrap_or_default()),
                });
            }
            _ = tick.tick(), if tty => screen.redraw(&current)?,
            event = events.next() => {
                let Some(event) = event else {
                    return Err(PluginError::Other("the watch ended".into()));
                };
                match event {
                    Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => {
                        let (_, r) = decode(obj)?;
                        screen.show(&r)?;
                        current = r;
                        if let Some(phase) = render::phase_of(&current).filter(|p| render::is_terminal(*p)) {
                            eprintln!("{name} is {phase}.");
                            return Ok(());
                        }
                    }
                    Ok(watcher::Event::Delete(_)) => {
                        return Err(PluginError::Other(format!(
                            "embeddingrollout {name} was deleted from namespace {}", ctx.namespace
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let (kube_err, verb) = match e {
                            watcher::Error::InitialListFailed(e) => (e, "list"),
                            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => (e, "watch"),
                            watcher::Error::WatchError(s) => (kube::Error::Api(s), "watch"),
                            watcher::Error::NoResourceVersion => {
                                return Err(PluginError::Other("the API server sent no resourceVersion".into()));
                            }
                        };
                        match ctx.explain(kube_err, verb, Some(name), false).await {
                            // Permanent: waiting will not change them.
                            e @ (PluginError::Forbidden { .. } | PluginError::Unauthorized { .. } | PluginError::CrdMissing { .. }) => return Err(e),
                            // Transient (a restart of the API server, a network blip): the
                            // watcher retries with backoff; say it once.
                            e if !warned => {
                                warned = true;
                                eprintln!("warning: {e}; retrying");
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// What `watch` has drawn: on a terminal a redrawn screen, elsewhere a new block per change.
struct Screen {
    tty: bool,
    /// resourceVersion of the last frame.
    last: Option<String>,
}

impl Screen {
    /// Draws `r` unless this version was drawn already (the first get and the watcher's
    /// initial list return the same one).
    fn show(&mut self, r: &EmbeddingRollout) -> Result<(), PluginError> {
        let version = r.metadata.resource_version.clone();
        if version.is_some() && self.last == version {
            return Ok(());
        }
        self.last = version;
        self.redraw(r)
    }

    fn redraw(&mut self, r: &EmbeddingRollout) -> Result<(), PluginError> {
        let frame = render::watch_frame(r, Utc::now());
        if self.tty {
            // Cursor home, then clear the screen: the frame replaces the last one in place.
            out(&format!("\x1b[H\x1b[2J{frame}"))
        } else {
            out(&format!("{frame}\n"))
        }
    }
}

async fn send(ctx: &Ctx, name: &str, cmd: Command, force: bool) -> Result<(), PluginError> {
    let user = ctx.whoami().await;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    // The phase is judged on the version that gets patched (resourceVersion precondition); the
    // operator writes status often, so a conflict reads again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (value, r) = ctx.get(name).await?;
        let state = manual::State::of(&r);
        if let Err(reason) = manual::check(cmd, &state) {
            if !force {
                return Err(PluginError::Refused {
                    command: cmd,
                    name: name.to_string(),
                    reason,
                });
            }
            eprintln!("warning: sending {cmd} with --force although {reason}");
        }
        let annotations = r.metadata.annotations.clone().unwrap_or_default();
        if let Some(pending) = annotations.get(COMMAND_ANNOTATION) {
            let by = annotations
                .get(COMMAND_BY_ANNOTATION)
                .map(|b| format!(" (sent by {b})"))
                .unwrap_or_default();
            eprintln!(
                "note: replaces the command {pending:?}{by} the operator has not acted on yet"
            );
        }
        let at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let patch = json!({"metadata": {
            "resourceVersion": value["metadata"]["resourceVersion"],
            "annotations": {
                COMMAND_ANNOTATION: cmd.to_string(),
                COMMAND_BY_ANNOTATION: user,
                COMMAND_AT_ANNOTATION: at,
            }
        }});
        match ctx
            .api(false)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                let phase = render::phase_of(&r)
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "not yet reconciled".into());
                let weight = r.status.as_ref().map(|s| s.current_weight).unwrap_or(0);
                return out(&format!(
                    "{cmd}: sent to {}/{name} as {user} at {at} (it was {phase}, step {}, weight {weight}%)\n\
                     next: {}\n",
                    ctx.namespace,
                    render::step_of(&r),
                    manual::next(cmd, &r)
                ));
            }
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => continue,
            Err(e) => return Err(ctx.explain(e, "patch", Some(name), false).await),
        }
    }
}
