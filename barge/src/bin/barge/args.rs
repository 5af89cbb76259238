//! Command-line arguments as clap parses them, plus the small value parsers they need.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Move big files over the network, fast and without losing a byte.
#[derive(Debug, Parser)]
#[command(
    name = "barge",
    version,
    about,
    after_help = "Units: sizes count in powers of 1024 (500M = 500 MiB, 1.5G, 4GiB, 1T); rates are \
bytes per second the same way (10M = 10 MiB/s) or bits per second in powers of 1000 as networks \
count them (100Mbit = 12.5 MB/s). Times are in seconds (0.5 allowed).

Start here:
  barge serve --dir inbox                                   # receive into ./inbox on 127.0.0.1:8080
  barge send movie.mp4 photos/ --to 127.0.0.1:8080          # send; again: only changes move
  barge get 127.0.0.1:8080 photos -o backup                 # fetch back, verified"
)]
pub struct Opts {
    /// More log output (-v debug, -vv trace). RUST_LOG, when set, takes precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive uploads (barge's protocol and the lesson's) into a folder; serve listings and downloads.
    #[command(after_help = "Examples:
  barge serve --dir inbox                                   # 127.0.0.1:8080, files into ./inbox
  barge serve --dir /srv/files --addr 0.0.0.0:8080 --tls --token-file tokens
  barge serve --dir inbox --quota 500G --max-file-size 50G --bwlimit 100Mbit")]
    Serve(Box<ServeArgs>),
    /// Upload files and folders: verified, resumable, reconnecting (--legacy: the lesson's format).
    #[command(after_help = "Examples:
  barge send movie.mp4 photos/ --to 127.0.0.1:8080          # files and folders (trees kept)
  barge send photos/ --to files.example.org:8080            # again: only what changed moves
  barge send big.iso --to [::1]:8080 --tls --json           # TLS (trust on first use), JSON lines
  tar c src | barge send - --name src.tar --to host:8080    # stdin (kept in a temp file first)")]
    Send(SendArgs),
    /// Download files or folders from a server: verified and resumable.
    #[command(after_help = "Examples:
  barge get localhost:8080 movie.mp4 -o downloads           # the server first, then what to fetch
  barge get localhost:8080 photos -o backup                 # a folder; again: only what changed
  barge get localhost:8080 photos --on-conflict rename      # keep both when a file differs
  barge get localhost:8080 src.tar -o - | tar x             # one file to stdout")]
    Get(GetArgs),
    /// List what a server stores: name, size, modification time, BLAKE3 digest.
    #[command(after_help = "Examples:
  barge ls localhost:8080                                   # the top folder
  barge ls localhost:8080 photos -r                         # everything below photos
  barge ls files.example.org:8080 --json                    # one entry event per line")]
    Ls(LsArgs),
    /// Remove files (and, with -r, folders) on a server (needs the `delete` right).
    #[command(after_help = "Examples:
  barge rm localhost:8080 old.iso                           # a file
  barge rm localhost:8080 photos/2019 -r                    # a folder and all below it")]
    Rm(RmArgs),
    /// Rename or move a file or folder on a server (needs the `delete` right; never replaces).
    #[command(after_help = "Examples:
  barge mv localhost:8080 draft.txt final.txt
  barge mv localhost:8080 photos/a.jpg archive/a.jpg        # into another folder (created)")]
    Mv(ManageArgs),
    /// Create folders on a server, with their parents (needs the `upload` right).
    #[command(after_help = "Examples:
  barge mkdir localhost:8080 photos/2026/december
  barge send a.jpg --to localhost:8080 --dest photos/2026   # or let send create it")]
    Mkdir(ManageArgs),
    /// Measure what the link to a server carries, memory to memory (like iperf3; no disk).
    #[command(after_help = "Examples:
  barge bench 127.0.0.1:8080 --size 4G
  barge bench files.example.org:8080 --tls --json")]
    Bench(BenchArgs),
    /// The lesson's menu: list a folder, choose files by number, upload each.
    #[command(after_help = "Examples:
  barge pick ~/Videos --to 127.0.0.1:8080                   # numbers choose, q quits
  barge pick ~/Videos --to 127.0.0.1:8080 --legacy          # the lesson's own format")]
    Pick(PickArgs),
    /// List the barge servers on the LAN (those started with `serve --announce`).
    #[command(after_help = "Examples:
  barge discover                                            # who answers within 2 s
  barge discover --json                                     # one JSON line per server
  barge discover --watch                                    # servers as they come and go
  barge send photos/ --to studio                            # a discovered server, by name")]
    Discover(DiscoverArgs),
    /// UDP request/reply: a server that answers every datagram, and a ping-like client.
    #[command(subcommand)]
    Udp(UdpCommand),
    /// The upper-case echo service (the lesson's socketserver example) and its client.
    #[command(subcommand)]
    Echo(EchoCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = "Examples:
  barge completions bash > ~/.local/share/bash-completion/completions/barge
  barge completions zsh > ~/.zfunc/_barge")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print barge's manual page (roff) to stdout.
    #[command(after_help = "Examples:
  barge man > barge.1 && man ./barge.1")]
    Man,
}

/// `barge discover`.
#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// Seconds to wait for answers (with --watch: how long to watch; default forever).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Only the server of this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Ask this address instead of the multicast group (where multicast does not pass).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "watch")]
    pub at: Option<SocketAddr>,
    /// Keep listening: print servers as they appear and as they stop announcing.
    #[arg(long)]
    pub watch: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// The UDP port of barge's discovery group.
    #[arg(long, default_value_t = barge::lan::PORT, value_name = "PORT")]
    pub discovery_port: u16,
}

#[derive(Debug, Subcommand)]
pub enum UdpCommand {
    /// Answer every datagram (hi, like the lesson, unless told otherwise).
    Serve(UdpServeArgs),
    /// Send a datagram and wait for the reply, with timeout and retries; --count for a ping-like run.
    Send(UdpSendArgs),
}

#[derive(Debug, Subcommand)]
pub enum EchoCommand {
    /// Answer each line upper-cased.
    Serve(EchoServeArgs),
    /// Send messages (arguments, or stdin lines) and print the replies.
    Send(EchoSendArgs),
}

/// Policy of the server framework, shared by every TCP service.
#[derive(Debug, clap::Args)]
pub struct FrameworkArgs {
    /// Connections served at once; more clients wait their turn.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_connections: usize,
    /// Seconds a client may stay silent before its connection is closed.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub idle_timeout: f64,
    /// On Ctrl-C/SIGTERM, seconds to let connections finish before cancelling them.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub shutdown_grace: f64,
    /// Seconds a client has to finish a request header (or TLS handshake) once it has begun: cuts
    /// off slow-loris clients.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub header_timeout: f64,
    /// Connections served at once from one IP address; more are closed at once.
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Bandwidth for all connections together: bytes per second (10M = 10 MiB/s) or bits
    /// (100Mbit).
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub bwlimit: Option<u64>,
    /// Bandwidth per connection: bytes per second (1M = 1 MiB/s) or bits (8Mbit).
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub bwlimit_per_connection: Option<u64>,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("mode").multiple(false))]
pub struct UdpServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "HOST:PORT")]
    pub addr: SocketAddr,
    /// Reply with the datagram itself.
    #[arg(long, group = "mode")]
    pub echo: bool,
    /// Reply with the datagram upper-cased.
    #[arg(long, group = "mode")]
    pub upper: bool,
    /// Reply with this text.
    #[arg(long, group = "mode", value_name = "TEXT")]
    pub reply: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UdpSendArgs {
    /// [HOST:PORT] [MESSAGE]: the server (default 127.0.0.1:9000) and the message (default hello).
    /// A single argument is the server if it is an IP:port, else the message.
    #[arg(num_args = 0..=2, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Requests to make, one after another.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub count: u64,
    /// Seconds to pause between requests (like ping's -i; 0.01 = 10 ms).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub interval: f64,
    /// Seconds to wait for each reply (like every other --timeout).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub timeout: f64,
    /// Extra transmissions of a request that got no reply.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub retries: u32,
    /// Payload size in bytes: the message repeated (or cut) to this length.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub size: Option<u64>,
    /// One JSON object per line on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EchoServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9999", value_name = "HOST:PORT")]
    pub addr: SocketAddr,
    /// Longest accepted line (e.g. 4M); a longer one gets an ERROR line and the connection closes.
    #[arg(long, value_parser = parse_size, default_value = "4M", value_name = "SIZE")]
    pub max_line: u64,
    /// Behave exactly like the lesson: one message per connection, reply without newline.
    #[arg(long)]
    pub lesson: bool,
    #[command(flatten)]
    pub framework: FrameworkArgs,
}

#[derive(Debug, clap::Args)]
pub struct EchoSendArgs {
    /// [HOST:PORT] [MESSAGE...]: the server (default 127.0.0.1:9999; recognised when it is an
    /// IP:port) and messages; with no message, stdin lines are sent one by one.
    #[arg(value_name = "ARGS")]
    pub args: Vec<String>,
    /// Longest accepted reply line.
    #[arg(long, value_parser = parse_size, default_value = "4M", value_name = "SIZE")]
    pub max_line: u64,
    /// Seconds to wait for the connection to open.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub connect_timeout: f64,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,
    /// One JSON object per line on stdout: {"event":"reply","message":...,"reply":...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Folder to store received files in (created if missing). With --store, only barge's own
    /// state (the self-signed TLS certificate) is kept here.
    #[arg(long, default_value = "barge-inbox", value_name = "DIR")]
    pub dir: PathBuf,
    /// Also serve HTTP on this address (HTTPS with --tls, same certificate): tus 1.0 uploads at
    /// /uploads/, downloads at /files/PATH, listings at /api/ls.
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<SocketAddr>,
    /// Let web pages from this origin (e.g. https://files.example.org) call the HTTP face (CORS
    /// is off without it).
    #[arg(long, value_name = "ORIGIN", requires = "http")]
    pub http_cors: Option<String>,
    /// Store files in an S3 bucket instead of --dir: s3://BUCKET or s3://BUCKET/PREFIX. Keys
    /// come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), else from the
    /// shared credentials file (--s3-profile).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The S3 service's address, e.g. http://127.0.0.1:3900 for garage [default: AWS_ENDPOINT_URL,
    /// else AWS itself].
    #[arg(long, value_name = "URL", requires = "store")]
    pub s3_endpoint: Option<String>,
    /// The S3 region [default: AWS_REGION, else us-east-1; garage uses "garage"].
    #[arg(long, value_name = "REGION", requires = "store")]
    pub s3_region: Option<String>,
    /// Allow an http:// endpoint (keys and data then cross the network unencrypted).
    #[arg(long, requires = "store")]
    pub s3_allow_http: bool,
    /// The profile to read from the shared credentials file (~/.aws/credentials, or
    /// AWS_SHARED_CREDENTIALS_FILE) [default: AWS_PROFILE, else "default"].
    #[arg(long, value_name = "NAME", requires = "store")]
    pub s3_profile: Option<String>,
    /// Bytes per uploaded part (at least 5M, a multiple of 1M). Parts stream to the bucket as
    /// their bytes arrive, so memory does not grow with the part size.
    #[arg(long, value_parser = parse_size, default_value = "16M", value_name = "SIZE", requires = "store")]
    pub s3_part_size: u64,
    /// Parts of one upload the bucket may take at once: more is faster on a cluster, but a
    /// server killed mid-upload loses up to this many parts and a chunk (1: one part at most).
    #[arg(long, default_value_t = barge::store::s3::DEFAULT_PARTS_IN_FLIGHT, value_name = "N", requires = "store")]
    pub s3_parts_in_flight: usize,
    /// Bytes all uploads together may hold waiting for the bucket (what lets parts overlap).
    #[arg(long, value_parser = parse_size, default_value = "24M", value_name = "SIZE", requires = "store")]
    pub s3_memory: u64,
    /// Address to listen on, e.g. 0.0.0.0:8080 or [::1]:8080 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub addr: SocketAddr,
    /// What to do when a received name already exists.
    #[arg(long, value_enum, default_value_t = Conflict::Rename, value_name = "POLICY")]
    pub on_conflict: Conflict,
    /// Refuse files larger than this (e.g. 500M, 4G); checked before any byte is written.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_file_size: Option<u64>,
    #[command(flatten)]
    pub framework: FrameworkArgs,
    /// Do not fsync files before publishing them (faster; a power loss may then lose data).
    #[arg(long)]
    pub no_fsync: bool,
    /// Refuse listing and downloading (uploads only).
    #[arg(long)]
    pub no_download: bool,
    /// Let anyone remove and rename (`barge rm`, `barge mv`) on a server without --token-file;
    /// with tokens, the `delete` right decides.
    #[arg(long)]
    pub allow_delete: bool,
    /// Seconds an interrupted upload is kept for its sender to resume.
    #[arg(long, default_value_t = 86400.0, value_name = "SECS")]
    pub partial_ttl: f64,
    /// Bytes between two resume checkpoints (data fsynced, then its chunk digests recorded): what
    /// a server crash can cost a resumed upload at most.
    #[arg(long, value_parser = parse_size, default_value = "64M", value_name = "SIZE")]
    pub checkpoint: u64,
    /// Most bytes stored in the folder (e.g. 100G); uploads that would exceed it are refused.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub quota: Option<u64>,
    /// Encrypt barge's protocol with TLS 1.3 (plain-text barge connections are then refused). Without
    /// --cert/--key a self-signed certificate is made in <dir>/.barge/tls on first start.
    #[arg(long)]
    pub tls: bool,
    /// Certificate chain (PEM) to serve instead of the self-signed one; implies --tls.
    #[arg(long, requires = "key", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Require a token on every barge connection: lines of `<token> <rights> [root]`, rights
    /// `all` or some of `upload,download,list,delete`, root a folder below --dir the token is
    /// confined to.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Accept the lesson's upload format (no authentication, no encryption) even when listening
    /// on a non-loopback address or requiring tokens, where it is off by default.
    #[arg(long)]
    pub legacy: bool,
    /// Announce this server on the LAN (UDP multicast, TTL 1) so that `barge discover` finds it
    /// and `--to NAME` reaches it; needs an address others can reach (e.g. --addr 0.0.0.0:8080).
    #[arg(long)]
    pub announce: bool,
    /// The name announced on the LAN (and shown to LocalSend apps) [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Seconds between two announcements (±20 %); listeners forget a server after three.
    #[arg(long, default_value_t = 30, value_name = "SECS", requires = "announce")]
    pub announce_every: u32,
    /// The UDP port of barge's discovery group.
    #[arg(long, default_value_t = barge::lan::PORT, value_name = "PORT")]
    pub discovery_port: u16,
    /// Receive from LocalSend apps (protocol v2, HTTPS with this server's certificate) on this
    /// address [default: 0.0.0.0:53317]; also present on LocalSend's multicast group unless the
    /// address is loopback.
    #[arg(long, value_name = "HOST:PORT", num_args = 0..=1, default_missing_value = "0.0.0.0:53317")]
    pub localsend: Option<SocketAddr>,
    /// The PIN LocalSend senders must give. Without it (and without --token-file, whose tokens
    /// then serve as PINs), only senders on this machine's own subnets are accepted, each logged.
    #[arg(long, value_name = "PIN", requires = "localsend")]
    pub localsend_pin: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Conflict {
    /// Keep both: store as "name (1).ext".
    Rename,
    /// Replace the existing file.
    Overwrite,
    /// Refuse the upload.
    Fail,
}

/// How to reach a server and whom to trust: shared by every command that speaks barge's protocol.
#[derive(Debug, clap::Args)]
pub struct ConnArgs {
    /// Seconds to wait for the connection to open.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub connect_timeout: f64,
    /// Seconds the server may leave a send or receive waiting before giving up.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub timeout: f64,
    /// Connect with TLS, trusting the server's certificate on first use (recorded in the
    /// known-hosts file, refused loudly if it ever changes) unless --fingerprint or --ca is given.
    #[arg(long)]
    pub tls: bool,
    /// Trust exactly the certificate with this fingerprint (printed by `serve --tls`); implies
    /// --tls.
    #[arg(long, conflicts_with = "ca", value_name = "SHA256:HEX")]
    pub fingerprint: Option<String>,
    /// Trust certificates issued by the CAs in this PEM file, for the host name dialled; implies --tls.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Known-hosts file for trust on first use [default: $BARGE_KNOWN_HOSTS, else
    /// ~/.config/barge/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// File whose first line is the token to present (else the BARGE_TOKEN environment variable).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The server of a command that names it first (`barge get HOST:PORT ...`), or by flag.
#[derive(Debug, clap::Args)]
pub struct FromArgs {
    /// The server, when it is not the first argument.
    #[arg(
        long,
        visible_alias = "server",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT"
    )]
    pub from: String,
}

/// Options of the commands that move files (`send`, `get`, `pick`).
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Progress on stderr: one overall line, plus a bar for each big file; auto shows it only
    /// when stderr is a terminal.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, value_name = "WHEN")]
    pub progress: ProgressMode,
    /// Bandwidth limit: bytes per second (10M = 10 MiB/s) or bits (100Mbit = 12.5 MB/s).
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub bwlimit: Option<u64>,
    /// Reconnections after a lost connection (with back-off), and retries of a corrupted file.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub retries: u32,
    /// One JSON object per line on stdout (events, then a summary) instead of text.
    #[arg(long)]
    pub json: bool,
    /// A file the destination already has: identical files are always left alone; a different
    /// one is replaced (update), kept (skip), stored beside it as "name (1)" (rename), reported
    /// (fail); overwrite sends everything again.
    #[arg(long, value_enum, default_value_t = Existing::Update, value_name = "POLICY")]
    pub on_conflict: Existing,
    /// Compare digests even when size and modification time match (reads every file; by
    /// default a file of the same size and time is taken as the same, like rsync).
    #[arg(long)]
    pub checksum: bool,
    /// Leave out files and folders matching GLOB (repeatable): `*.tmp` matches a name at any
    /// depth, `build/**` a path below what was named.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Only files matching GLOB (repeatable; folders are still walked to find them).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Say what would be sent or fetched (new, updated, unchanged) and move nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// `--on-conflict` of `send` and `get` (see `barge::client::v1::OnExisting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Existing {
    /// Same content: leave it; other content: replace it atomically.
    Update,
    /// Leave whatever is there.
    Skip,
    /// Same content: leave it; other content: keep both ("name (1)").
    Rename,
    /// Send everything and replace.
    Overwrite,
    /// Same content: leave it; other content: report a conflict.
    Fail,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Files and folders to upload (a folder keeps its tree); `-` reads stdin (with --name).
    #[arg(required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// The server.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub to: String,
    /// Upload into this folder on the server (created if missing) instead of its top.
    #[arg(long, value_name = "FOLDER")]
    pub dest: Option<String>,
    /// The name to store stdin under (`barge send - --name NAME`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Use the lesson's format: files only, no reply, no verification, no resume.
    #[arg(long)]
    pub legacy: bool,
    /// Follow symbolic links in folders (each real folder once); without it, links are skipped
    /// and reported.
    #[arg(long)]
    pub follow_links: bool,
    /// Stripe each large file over N connections (1 to 16; a file gets at most one per 4 MiB
    /// left to send): faster where one TCP flow is held to a rate (a per-flow shaper, a long fat
    /// path). One verification and one resume point, as with one connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16), value_name = "N")]
    pub streams: u32,
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// [HOST:PORT] NAME...: the server (else --from) and the files or folders to download.
    #[arg(required = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Folder to download into; `-` writes a single file to stdout (verified before its first
    /// byte is written).
    #[arg(short = 'o', long = "out", default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
    /// Same as --on-conflict overwrite (fetch everything again and replace).
    #[arg(long)]
    pub overwrite: bool,
    /// Remove local files below the folders fetched that the server does not have (never files
    /// the filter leaves out, never by default).
    #[arg(long)]
    pub delete: bool,
    /// Do not fsync fetched files before publishing them (faster; a power loss may then lose
    /// them), like `serve --no-fsync`.
    #[arg(long)]
    pub no_fsync: bool,
    #[command(flatten)]
    pub from: FromArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// [HOST:PORT]: the server (else --from).
    #[arg(num_args = 0..=1, value_name = "HOST:PORT")]
    pub args: Vec<String>,
    /// Bytes to send (e.g. 1G).
    #[arg(long, value_parser = parse_size, default_value = "1G", value_name = "SIZE")]
    pub size: u64,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub from: FromArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// [HOST:PORT] [PATH]: the server (else --from) and the folder or file to list (default:
    /// everything at the top).
    #[arg(num_args = 0..=2, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Everything below the folder, with relative paths.
    #[arg(short, long)]
    pub recursive: bool,
    /// One JSON object per entry on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub from: FromArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `rm`, `mv` and `mkdir` on a server.
#[derive(Debug, clap::Args)]
pub struct ManageArgs {
    /// [HOST:PORT] PATH...: the server (else --from) and the paths (mv: FROM TO).
    #[arg(required = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// One JSON object per path on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub from: FromArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Remove folders with everything in them (without it, only files and empty folders).
    #[arg(short, long)]
    pub recursive: bool,
    #[command(flatten)]
    pub manage: ManageArgs,
}

#[derive(Debug, clap::Args)]
pub struct PickArgs {
    /// Folder whose files are offered (its subfolders can be entered).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The server.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub to: String,
    /// Use the lesson's format (one connection, no reply, no verification).
    #[arg(long)]
    pub legacy: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Always,
    Never,
}

/// Splits `[HOST:PORT] REST...`: the first argument is the server when it has the shape of an
/// address (see [`address_like`]), else `default` (the `--to`/`--from` flag) is: an address or a
/// server name to look up on the LAN.
pub fn split_target(
    args: &[String],
    default: &str,
) -> Result<(String, Vec<String>), crate::config::UsageError> {
    if let Some((first, rest)) = args.split_first()
        && let Some(addr) = address_like(first)
    {
        return Ok((addr?, rest.to_vec()));
    }
    // Not an address: a server's name on the LAN (looked up when connecting), if it can be one.
    let addr = address_like(default).unwrap_or_else(|| {
        // An IP address without its port is a mistake, not a name.
        let ip = default.parse::<std::net::IpAddr>().is_ok();
        match barge_proto::lan::check_name(default) {
            Ok(()) if !ip => Ok(default.to_owned()),
            _ => Err(bad_address(default)),
        }
    })?;
    Ok((addr, args.to_vec()))
}

/// `Some(Ok(addr))` for `HOST:PORT` (a DNS name, an IPv4 address, or a bracketed IPv6 address,
/// and a port 1–65535); `Some(Err)` for something shaped like one that is not (a bad port, an
/// unclosed bracket); `None` for anything else (a file name, a path, a message).
pub fn address_like(s: &str) -> Option<Result<String, crate::config::UsageError>> {
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once(']') else {
            return Some(Err(bad_address(s)));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Some(Err(bad_address(s)));
        }
        port.strip_prefix(':').unwrap_or("-")
    } else {
        let (host, port) = s.rsplit_once(':')?;
        let plausible_host = !host.is_empty()
            && !host.contains(['/', ':', '\\', ' '])
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !plausible_host || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            // `notes:draft`, `a/b:1`: not an address. `host:` or `host:99999` are, badly.
            return (plausible_host
                && (port.is_empty() || port.bytes().all(|b| b.is_ascii_digit())))
            .then(|| Err(bad_address(s)));
        }
        port
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Some(Ok(s.to_owned())),
        _ => Some(Err(bad_address(s))),
    }
}

fn bad_address(s: &str) -> crate::config::UsageError {
    crate::config::UsageError(format!(
        "{s:?} is not an address: expected HOST:PORT, e.g. 127.0.0.1:8080, [::1]:8080 or \
         files.example.org:8080 (ports 1-65535)"
    ))
}

/// Parses a size: `123`, `64K`, `500M`, `1.5G`, `4GiB`, `1T`. K, M, G and T are binary multiples
/// (1K = 1024 bytes, as `ls -h` and `df -h` count); an optional `B` or `iB` is allowed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let upper = s.trim().to_ascii_uppercase();
    let t = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in {s:?}")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    scaled(digits, (1u64 << shift) as f64).ok_or_else(|| {
        format!("{s:?} is not a size like 500M, 1.5G or 4GiB (K, M, G, T are powers of 1024)")
    })
}

/// Parses a rate in bytes per second: a size (`10M` = 10 MiB/s), or bits per second with a
/// decimal prefix as networks count them: `100Mbit` = 100,000,000 bits/s = 12.5 MB/s.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let Some(t) = lower
        .strip_suffix("bit/s")
        .or_else(|| lower.strip_suffix("bit"))
        .or_else(|| lower.strip_suffix("bps"))
    else {
        return parse_size(s);
    };
    let (digits, scale) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    scaled(digits, scale / 8.0)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a rate like 10M (bytes/s) or 100Mbit (bits/s)"))
}

/// `digits` (an integer or a decimal number) times `unit`, as whole bytes.
fn scaled(digits: &str, unit: f64) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    if let Ok(n) = digits.parse::<u64>() {
        return n
            .checked_mul(unit as u64)
            .filter(|_| unit.fract() == 0.0)
            .or_else(|| {
                let v = n as f64 * unit;
                (v < u64::MAX as f64).then_some(v as u64)
            });
    }
    let v = digits.parse::<f64>().ok()? * unit;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_target_recognises_addresses() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let split = |a: &[&str], d: &str| split_target(&v(a), d).map_err(|e| e.0);
        assert_eq!(
            split(&["127.0.0.1:9", "hi"], "d:1"),
            Ok(("127.0.0.1:9".into(), v(&["hi"])))
        );
        assert_eq!(split(&["[::1]:9"], "d:1"), Ok(("[::1]:9".into(), v(&[]))));
        assert_eq!(
            split(&["localhost:8097"], "d:1"),
            Ok(("localhost:8097".into(), v(&[])))
        );
        assert_eq!(
            split(&["files.example.org:80", "a/b.txt"], "d:1"),
            Ok(("files.example.org:80".into(), v(&["a/b.txt"])))
        );
        assert_eq!(split(&["hello"], "d:1"), Ok(("d:1".into(), v(&["hello"]))));
        assert_eq!(
            split(&["movie.mp4"], "d:1"),
            Ok(("d:1".into(), v(&["movie.mp4"])))
        );
        assert_eq!(
            split(&["notes:draft"], "d:1"),
            Ok(("d:1".into(), v(&["notes:draft"])))
        );
        assert_eq!(split(&[], "d:1"), Ok(("d:1".into(), v(&[]))));
        for bad in [
            "localhost:99999",
            "localhost:0",
            "host:",
            "[::1",
            "[nope]:1",
        ] {
            assert!(split(&[bad], "d:1").is_err(), "{bad}");
        }
        // The flag's value must be an address too.
        assert!(split(&["x"], "127.0.0.1").is_err());
        // A name (a server found on the LAN when connecting) is taken as it is.
        assert_eq!(split(&["x"], "studio").unwrap().0, "studio");
        assert!(split(&["x"], "127.0.0.1:99999").is_err());
    }

    #[test]
    fn sizes_take_decimals_and_rates_take_bits() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert!(parse_size("1.2.3M").is_err() && parse_size("-1").is_err());
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("100Mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("1gbit/s"), Ok(125_000_000));
        assert_eq!(parse_rate("8kbps"), Ok(1000));
        assert!(parse_rate("0bit").is_err() && parse_rate("fastbit").is_err());
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1tb"), Ok(1 << 40));
        assert!(parse_size("x").is_err());
        assert!(parse_size("5Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
