using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Mono.Unix.Native;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;
using Vism.Host.Commands;
using Vism.Host.Status;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary>
/// vism as a systemd service, run as a real child process: the readiness protocol on a NOTIFY_SOCKET
/// the test listens on, SIGHUP and <c>vism reload</c> with real vhost-user and mmio clients connected,
/// socket permissions, and the log formats.
/// </summary>
public sealed partial class ServiceTests : IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(120);
    private readonly TempDir _dir = new("vism-svc");

    public void Dispose() => _dir.Dispose();

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    /// <summary>A datagram socket standing in for systemd's notification socket.</summary>
    private sealed class NotifySocket : IDisposable
    {
        private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);

        public NotifySocket(string path)
        {
            Path = path;
            _socket.Bind(new UnixDomainSocketEndPoint(path));
        }

        public string Path { get; }

        /// <summary>The next datagram; fails the test after <paramref name="timeout"/>.</summary>
        public string Next(TimeSpan timeout)
        {
            _socket.ReceiveTimeout = (int)timeout.TotalMilliseconds;
            var buffer = new byte[4096];
            int n = _socket.Receive(buffer);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }

        public void Dispose() => _socket.Dispose();
    }

    private Process Start(IReadOnlyDictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "vism.dll"));
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("--plugins");
        psi.ArgumentList.Add(TestPlugins.InRepoPluginsDir);
        foreach ((string k, string v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        psi.Environment.Remove("Logging__Console__FormatterName");
        if (env?.TryGetValue("Logging__Console__FormatterName", out string? f) == true) psi.Environment["Logging__Console__FormatterName"] = f;
        return Process.Start(psi)!;
    }

    private string Config(string devices, string host = "")
    {
        string file = _dir["vism.toml"];
        File.WriteAllText(file, $"""
            [host]
            state-dir = "{_dir["state"]}"
            socket-dir = "{_dir["sockets"]}"
            {host}
            {devices}
            """);
        return file;
    }

    private string Device(string name, string transport) => DeviceToml(name, transport, _dir["mem"]);

    /// <summary>A small device (32 regions of 64 KiB) on a real transport with file memory in <paramref name="memory"/>.</summary>
    internal static string DeviceToml(string name, string transport, string memory) => $"""
        [[device]]
        name = "{name}"
        region-size = "64KiB"
        window-size = "4MiB"
        [device.transport]
        kind = "{transport}"
        [device.memory]
        kind = "file"
        directory = "{memory}"

        """;

    private string Socket(string name, string transport) => _dir[$"sockets/{name}{(transport == "mmio" ? ".mmio.sock" : ".sock")}"];

    private static string Status(string stateDir) =>
        StatusSocket.TryRead(Path.Combine(stateDir, StatusSocket.FileName), TimeSpan.FromSeconds(10)) ?? "(no answer)";

    private static IsmClient Connect(string socket, string transport) =>
        IsmClient.Start(transport == "mmio"
            ? MmioVmmClient.Connect(socket)
            : VhostUserFrontend.Connect(socket, new GuestRam(), new VhostUserFrontendOptions()));

    [Fact]
    public async Task Run_NotifiesReadyOnceEverySocketListens_ReloadsOnSighupKeepingConnectedDevices_AndNotifiesStopping()
    {
        using var notify = new NotifySocket(_dir["notify"]);
        string file = Config(Device("a", "vhost-user") + Device("b", "vhost-user") + Device("m", "mmio"));
        using Process vism = Start(new Dictionary<string, string> { ["NOTIFY_SOCKET"] = notify.Path }, "run", file, "--log-format", "json");
        Task<string> stderr = vism.StandardError.ReadToEndAsync();
        try
        {
            string ready = notify.Next(Wait);
            // READY=1 comes only after every device listens: the sockets exist at that moment.
            Assert.Contains("READY=1", ready);
            Assert.Contains($"MAINPID={vism.Id}", ready);
            Assert.All(new[] { Socket("a", "vhost-user"), Socket("b", "vhost-user"), Socket("m", "mmio") }, s => Assert.True(File.Exists(s), $"{s} missing at READY=1"));

            // Real clients: a vhost-user frontend on a, an mmio VMM on m; each allocates a region.
            using IsmClient a = Connect(Socket("a", "vhost-user"), "vhost-user");
            using IsmClient m = Connect(Socket("m", "mmio"), "mmio");
            AllocReply ra = a.Alloc(64 << 10);
            AllocReply rm = m.Alloc(64 << 10);
            Assert.True(ra.Ok && rm.Ok);

            // Remove b, add c, keep a and m untouched; SIGHUP.
            Config(Device("a", "vhost-user") + Device("m", "mmio") + Device("c", "vhost-user"));
            Assert.Equal(0, kill(vism.Id, 1));
            Assert.Contains("RELOADING=1", notify.Next(Wait));
            string after = notify.Next(Wait);
            Assert.Contains("READY=1", after);
            Assert.Contains("serving 3 device(s): a, m, c", after);
            Assert.False(File.Exists(Socket("b", "vhost-user")), "the removed device's socket was left behind");
            Assert.True(File.Exists(Socket("c", "vhost-user")), "the added device does not listen");
            using (IsmClient c = Connect(Socket("c", "vhost-user"), "vhost-user"))
                Assert.True(c.Alloc(64 << 10).Ok);

            // The kept devices kept their connections and regions: the clients go on working, the
            // other device attaches a's region by its token, and neither device saw a second connect.
            Assert.True(m.Attach(ra.Token).Ok, "a's region (by token) is gone after the reload");
            Assert.True(a.Alloc(64 << 10).Ok);
            using (JsonDocument status = JsonDocument.Parse(Status(_dir["state"])))
            {
                foreach (JsonElement d in status.RootElement.GetProperty("devices").EnumerateArray())
                {
                    string name = d.GetProperty("name").GetString()!;
                    if (name is "a" or "m")
                    {
                        Assert.True(d.GetProperty("connected").GetBoolean(), $"{name} lost its client");
                        Assert.Equal(1, d.GetProperty("counters").GetProperty("device.connect").GetInt64());
                    }
                }
            }

            // An invalid file (one missing quote) is refused by `vism reload`, and by SIGHUP, and
            // changes nothing; vism keeps running.
            File.WriteAllText(file, File.ReadAllText(file).Replace("name = \"c\"", "name = \"c"));
            var output = new StringWriter();
            var error = new StringWriter();
            Assert.Equal(ExitCodes.Failed, await Cli.InvokeAsync(["reload", "--state-dir", _dir["state"]], output, error));
            Assert.Contains($"{file}:", error.ToString());
            Assert.Contains("not applied", error.ToString());
            Assert.Equal(0, kill(vism.Id, 1));
            Assert.Contains("RELOADING=1", notify.Next(Wait));
            Assert.Contains("READY=1", notify.Next(Wait));
            Assert.Contains("RELOADING=1", notify.Next(Wait));
            Assert.Contains("READY=1", notify.Next(Wait));
            Assert.False(vism.HasExited, "SIGHUP with an invalid config ended vism");
            Assert.True(File.Exists(Socket("c", "vhost-user")));
            Assert.True(a.Alloc(64 << 10).Ok);

            Assert.Equal(0, kill(vism.Id, 15));
            Assert.Contains("STOPPING=1", notify.Next(Wait));
            Assert.True(vism.WaitForExit(Wait));
            Assert.Equal(0, vism.ExitCode);
            Assert.All(new[] { "a", "c" }, n => Assert.False(File.Exists(Socket(n, "vhost-user"))));
        }
        catch (SocketException ex)
        {
            vism.Kill(entireProcessTree: true);
            Assert.Fail($"a notification did not come ({ex.Message}); vism logged:\n{await stderr}");
        }
        finally
        {
            if (!vism.HasExited) vism.Kill(entireProcessTree: true);
        }
        // --log-format json: every line is one JSON object, the refused reload is logged with its error.
        string[] lines = (await stderr).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(lines);
        foreach (string line in lines)
        {
            using JsonDocument log = JsonDocument.Parse(line);
            Assert.True(log.RootElement.TryGetProperty("LogLevel", out _), line);
        }
        Assert.Contains(lines, l => l.Contains("reload refused", StringComparison.Ordinal) && l.Contains("\"Error\"", StringComparison.Ordinal));
    }

    [SkippableFact]
    public void Run_AppliesSocketOwnerGroupAndMode_FromHostAndTransport()
    {
        Skip.IfNot(Syscall.geteuid() == 0, "giving a socket to another user needs root");
        string file = Config(Device("a", "vhost-user") + Device("m", "mmio").Replace("kind = \"mmio\"", "kind = \"mmio\"\nsocket-mode = \"0600\"\nsocket-group = \"0\""),
            host: "socket-owner = \"nobody\"\nsocket-group = \"daemon\"\nsocket-mode = \"0660\"");
        using var notify = new NotifySocket(_dir["notify"]);
        using Process vism = Start(new Dictionary<string, string> { ["NOTIFY_SOCKET"] = notify.Path }, "run", file);
        try
        {
            Assert.Contains("READY=1", notify.Next(Wait));
            Assert.Equal(0, Syscall.stat(Socket("a", "vhost-user"), out Stat a));
            Assert.Equal(Syscall.getpwnam("nobody").pw_uid, a.st_uid);
            Assert.Equal(Syscall.getgrnam("daemon").gr_gid, a.st_gid);
            Assert.Equal("660", Convert.ToString((int)a.st_mode & 0x1FF, 8));
            Assert.Equal(0, Syscall.stat(Socket("m", "mmio"), out Stat m));
            Assert.Equal(Syscall.getpwnam("nobody").pw_uid, m.st_uid);
            Assert.Equal(0u, m.st_gid);
            Assert.Equal("600", Convert.ToString((int)m.st_mode & 0x1FF, 8));
        }
        finally
        {
            kill(vism.Id, 15);
            vism.WaitForExit(Wait);
        }
    }

    [Fact]
    public async Task Run_WithSystemdLogFormatFromTheEnvironment_PrefixesEachLineWithItsPriority()
    {
        string file = Config(Device("a", "vhost-user"));
        using var notify = new NotifySocket(_dir["notify"]);
        using Process vism = Start(new Dictionary<string, string> { ["NOTIFY_SOCKET"] = notify.Path, ["Logging__Console__FormatterName"] = "systemd" }, "run", file);
        Task<string> stderr = vism.StandardError.ReadToEndAsync();
        Assert.Contains("READY=1", notify.Next(Wait));
        kill(vism.Id, 15);
        Assert.True(vism.WaitForExit(Wait));
        string[] lines = (await stderr).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(lines);
        Assert.All(lines, l => Assert.Matches("^<[0-7]>", l));
        Assert.Contains(lines, l => l.StartsWith("<6>Vism.Host", StringComparison.Ordinal));
    }

    [SkippableFact]
    public async Task Run_UnderSocketActivation_ServesTheInheritedListener_AndLeavesItsFileToTheManager()
    {
        Skip.IfNot(File.Exists("/usr/bin/systemd-socket-activate"), "systemd-socket-activate is not installed (apt-get install systemd)");
        string file = Config(Device("a", "vhost-user"));
        string socket = Socket("a", "vhost-user");
        Directory.CreateDirectory(_dir["sockets"]);
        using var notify = new NotifySocket(_dir["notify"]);
        // systemd-socket-activate binds the socket, waits for a client, then execs vism with LISTEN_FDS.
        var psi = new ProcessStartInfo("/usr/bin/systemd-socket-activate") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { "-l", socket, "-E", $"NOTIFY_SOCKET={notify.Path}", "dotnet", Path.Combine(AppContext.BaseDirectory, "vism.dll"),
                     "run", file, "--plugins", TestPlugins.InRepoPluginsDir })
            psi.ArgumentList.Add(a);
        using Process vism = Process.Start(psi)!;
        Task<string> stderr = vism.StandardError.ReadToEndAsync();
        try
        {
            var sw = Stopwatch.StartNew();
            while (!File.Exists(socket) && sw.Elapsed < Wait) Thread.Sleep(20);
            Assert.True(File.Exists(socket), "systemd-socket-activate did not bind the socket");
            // The first client starts vism, which serves it on the inherited listener.
            using IsmClient a = Connect(socket, "vhost-user");
            Assert.Contains("READY=1", notify.Next(Wait));
            Assert.True(a.Alloc(64 << 10).Ok);
        }
        finally
        {
            kill(vism.Id, 15);
            if (!vism.WaitForExit(Wait)) vism.Kill(entireProcessTree: true);
        }
        string log = await stderr;
        Assert.Equal(0, vism.ExitCode);
        Assert.Contains($"socket activation: inherited {socket}", log);
        Assert.True(File.Exists(socket), "vism removed the socket file the service manager owns");
    }
}
