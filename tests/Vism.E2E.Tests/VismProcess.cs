using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.Json;
using Vism.Host.Status;
using Vism.Testing;

namespace Vism.E2E.Tests;

/// <summary>
/// The real <c>vism run</c> as a child process, serving vhost-user devices from a config this
/// class writes (memory <c>file</c> on tmpfs, events <c>vq</c>), with the in-repo plugins the host's
/// build deployed. Its state comes from the status socket (what <c>vism status --json</c> prints);
/// dispose stops it with SIGTERM.
/// </summary>
internal sealed partial class VismProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TempDir _dir;
    private readonly Action<string> _log;
    private readonly Task _stdout, _stderr;

    private VismProcess(Process process, TempDir dir, string config, Action<string> log)
    {
        _process = process;
        _dir = dir;
        _log = log;
        Config = config;
        _stdout = Pump(process.StandardOutput);
        _stderr = Pump(process.StandardError);
    }

    /// <summary>The config file vism runs.</summary>
    public string Config { get; }

    /// <summary>The state directory (status socket).</summary>
    public string StateDirectory => _dir["state"];

    /// <summary>The directory region files live in.</summary>
    public string RegionDirectory => _dir["regions"];

    /// <summary>The vism process's id.</summary>
    public int Pid => _process.Id;

    /// <summary>Whether the vism process has ended.</summary>
    public bool HasExited => _process.HasExited;

    /// <summary>The vhost-user or MMIO socket of device <paramref name="name"/>.</summary>
    public string Socket(string name) => _dir[name + ".sock"];

    private static string HostOutput => typeof(VismProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
        .Single(a => a.Key == "VismHostOutput").Value!;

    /// <summary>Writes a config with one vhost-user device per name (16 MiB window of 1 MiB
    /// regions, eventq) and starts <c>vism run</c>; returns once every socket listens.</summary>
    /// <param name="devices">Device names.</param>
    /// <param name="log">Receives vism's output lines.</param>
    /// <param name="loops">The host's <c>loops</c> (default: the host default, 1).</param>
    /// <param name="transport">The transport <c>kind</c> of every device (<c>vhost-user</c> or <c>mmio</c>).</param>
    /// <param name="persist">Whether the file memory plugin persists regions.</param>
    public static async Task<VismProcess> StartAsync(IReadOnlyList<string> devices, Action<string> log, int? loops = null,
                                                     string transport = "vhost-user", bool persist = false)
    {
        var dir = new TempDir("vism-e2e");
        string config = dir["vism.toml"];
        var toml = new System.Text.StringBuilder($"""
            [host]
            state-dir = "{dir["state"]}"
            socket-dir = "{dir.Path}"
            sharing = "pair"
            {(loops is int n ? $"loops = {n}" : "")}

            """);
        foreach (string name in devices)
        {
            toml.Append($"""

                [[device]]
                name = "{name}"
                region-size = "1MiB"
                window-size = "16MiB"
                [device.transport]
                kind = "{transport}"
                socket-path = "{dir[name + ".sock"]}"
                [device.memory]
                kind = "file"
                directory = "{dir["regions"]}"
                persist = {(persist ? "true" : "false")}
                [device.events]
                kind = "vq"

                """);
        }
        await File.WriteAllTextAsync(config, toml.ToString());
        log($"[vism] config {config}:\n{toml}");
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in new[] { Path.Combine(HostOutput, "vism.dll"), "run", config, "--log-level", "debug" })
            psi.ArgumentList.Add(a);
        var vism = new VismProcess(Process.Start(psi) ?? throw new InvalidOperationException("cannot start vism"), dir, config, log);
        long deadline = Environment.TickCount64 + 120_000;
        while (!devices.All(d => File.Exists(vism.Socket(d))))
        {
            if (vism._process.HasExited)
                throw new InvalidOperationException($"vism run exited with {vism._process.ExitCode} before listening");
            if (Environment.TickCount64 > deadline)
                throw new TimeoutException("vism run did not create its sockets within 2 minutes");
            await Task.Delay(50);
        }
        return vism;
    }

    /// <summary>The running host's state, as <c>vism status --json</c> reports it.</summary>
    public StatusReport Status()
    {
        string? text = StatusSocket.TryRead(Path.Combine(StateDirectory, StatusSocket.FileName), TimeSpan.FromSeconds(30));
        Assert.NotNull(text);
        return JsonSerializer.Deserialize<StatusReport>(text, StatusReport.Json)!;
    }

    /// <summary>The counters of device <paramref name="name"/>.</summary>
    public IReadOnlyDictionary<string, long> Counters(string name) => Status().Devices.Single(d => d.Name == name).Counters;

    private async Task Pump(StreamReader reader)
    {
        while (await reader.ReadLineAsync() is { } line)
        {
            try { _log("[vism] " + line); } catch (InvalidOperationException) { } // the test already finished
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    /// <summary>Stops vism with SIGTERM and returns its exit code.</summary>
    public async Task<int> StopAsync()
    {
        if (!_process.HasExited)
            kill(_process.Id, 15);
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        try
        {
            await _process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            _process.Kill(entireProcessTree: true);
            throw new TimeoutException("vism did not stop within a minute of SIGTERM");
        }
        await Task.WhenAll(_stdout, _stderr);
        return _process.ExitCode;
    }

    /// <summary>Stops vism if it still runs (killing it when SIGTERM is not enough; the test that
    /// cares asserts <see cref="StopAsync"/> itself) and deletes its directory.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited) await StopAsync();
        }
        catch (TimeoutException ex)
        {
            _log("[vism] " + ex.Message + "; killed");
        }
        finally
        {
            _process.Dispose();
            _dir.Dispose();
        }
    }
}
