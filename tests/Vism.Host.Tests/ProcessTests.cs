using System.Diagnostics;
using System.Runtime.InteropServices;
using Vism.Host.Status;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary>The real <c>vism</c> program as a child process: exit codes, signals, clean-up.</summary>
public sealed partial class ProcessTests : IClassFixture<PluginFixture>, IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);
    private readonly PluginFixture _plugins;
    private readonly TempDir _dir = new("vism-proc");

    public ProcessTests(PluginFixture plugins) => _plugins = plugins;

    public void Dispose() => _dir.Dispose();

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    private Process Start(params string[] args) => StartIgnoring(null, args);

    /// <summary>Starts vism through <c>/bin/sh</c> with <paramref name="ignored"/> signals (as
    /// <c>trap '' INT HUP</c> names them) set to SIG_IGN, which exec keeps: how a shell without job
    /// control starts a background job (SIGINT, SIGQUIT) and how nohup starts a command (SIGHUP).
    /// Null starts <c>dotnet</c> directly.</summary>
    private Process StartIgnoring(string? ignored, params string[] args)
    {
        var psi = new ProcessStartInfo(ignored is null ? "dotnet" : "/bin/sh")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (ignored is not null)
        {
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add($"trap '' {ignored}; exec \"$0\" \"$@\"");
            psi.ArgumentList.Add("dotnet");
        }
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "vism.dll"));
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach (string p in _plugins.SearchPaths.Append(TestPlugins.InRepoPluginsDir))
        {
            psi.ArgumentList.Add("--plugins");
            psi.ArgumentList.Add(p);
        }
        return Process.Start(psi)!;
    }

    private static (int Code, string Out, string Err) Finish(Process p)
    {
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(Wait))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"vism did not exit within {Wait}: {stderr.Result}");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Two devices, p0 and p1 (or the given names), with the sample memory plugin.</summary>
    private string Config(string transport = "mem", string first = "mem", string names = "p")
    {
        string file = _dir["vism.toml"];
        File.WriteAllText(file, $"""
            [host]
            state-dir = "{_dir["state"]}"
            socket-dir = "{_dir["sockets"]}"
            [[device]]
            name = "{names}0"
            [device.transport]
            kind = "{first}"
            [device.memory]
            kind = "sample-shm"
            [[device]]
            name = "{names}1"
            [device.transport]
            kind = "{transport}"
            [device.memory]
            kind = "sample-shm"
            """);
        return file;
    }

    [Theory]
    [InlineData(15, "SIGTERM")]
    [InlineData(2, "SIGINT")]
    public void RunServesUntilASignalThenStopsCleanlyWithExitCode0(int signal, string name)
    {
        string status = Path.Combine(_dir["state"], StatusSocket.FileName);
        using Process vism = Start("run", Config());
        var sw = Stopwatch.StartNew();
        string? report = null;
        // The status socket answers from the start; wait until both devices are up.
        while (report?.Contains("\"name\": \"p1\"") != true && !vism.HasExited && sw.Elapsed < Wait)
        {
            Thread.Sleep(50);
            if (File.Exists(status)) report = StatusSocket.TryRead(status, TimeSpan.FromSeconds(5));
        }
        Assert.True(report is not null, $"vism run never served status: {(vism.HasExited ? vism.StandardError.ReadToEnd() : "still running")}");
        Assert.Contains("\"name\": \"p0\"", report);
        Assert.Contains("\"name\": \"p1\"", report);

        Assert.Equal(0, kill(vism.Id, signal));
        (int code, _, string err) = Finish(vism);
        Assert.True(code == 0, $"{name}: exit {code}\n{err}");
        Assert.Contains("device p0: devid 1, transport mem at mem:p0:none", err);
        Assert.Contains("stopping", err);
        Assert.Contains("device p1: stopped", err);
        Assert.False(File.Exists(status), "the status socket was left behind");
    }

    [Fact]
    public async Task RunAnswersSigintAndSighupEvenWhenStartedWithThemIgnored()
    {
        // .NET keeps a signal that was ignored when the process started ignored, even when a
        // PosixSignalRegistration asks for it: vism started from a script's background job or by
        // nohup would then neither reload on SIGHUP nor stop on SIGINT (it hung until killed).
        string status = Path.Combine(_dir["state"], StatusSocket.FileName);
        using Process vism = StartIgnoring("INT HUP QUIT", "run", Config());
        var err = new System.Collections.Concurrent.ConcurrentQueue<string>();
        Task reader = Task.Run(async () =>
        {
            while (await vism.StandardError.ReadLineAsync() is { } line) err.Enqueue(line);
        });
        var sw = Stopwatch.StartNew();
        string? report = null;
        while (report?.Contains("\"name\": \"p1\"") != true && !vism.HasExited && sw.Elapsed < Wait)
        {
            Thread.Sleep(50);
            if (File.Exists(status)) report = StatusSocket.TryRead(status, TimeSpan.FromSeconds(5));
        }
        Assert.True(report is not null, $"vism run never served status: {string.Join('\n', err)}");

        Assert.Equal(0, kill(vism.Id, 1)); // SIGHUP: reload the (unchanged) file
        Assert.True(SpinWait.SpinUntil(() => err.Any(l => l.Contains("reloading", StringComparison.Ordinal)), TimeSpan.FromSeconds(20)),
            $"SIGHUP did not reload: {string.Join('\n', err)}");
        Assert.False(vism.HasExited, "SIGHUP ended vism");
        Assert.Equal(0, kill(vism.Id, 2)); // SIGINT: stop
        bool exited = vism.WaitForExit(TimeSpan.FromSeconds(20));
        if (!exited) vism.Kill(entireProcessTree: true);
        Assert.True(exited, $"SIGINT did not stop vism: {string.Join('\n', err)}");
        vism.WaitForExit();
        await reader.WaitAsync(Wait);
        Assert.Equal(0, vism.ExitCode);
        Assert.Contains(err, l => l.Contains("stopping", StringComparison.Ordinal));
        Assert.False(File.Exists(status), "the status socket was left behind");
    }

    [Theory]
    [InlineData("vhost-user", ".sock")]
    [InlineData("mmio", ".mmio.sock")]
    public void RunServesRealSocketsAndRemovesThemOnSigterm(string transport, string suffix)
    {
        string file = Config(transport, first: transport, names: "r");
        string[] sockets = [_dir[$"sockets/r0{suffix}"], _dir[$"sockets/r1{suffix}"]];
        using Process vism = Start("run", file);
        var sw = Stopwatch.StartNew();
        while (!sockets.All(File.Exists) && !vism.HasExited && sw.Elapsed < Wait) Thread.Sleep(50);
        Assert.True(sockets.All(File.Exists), $"the sockets never appeared: {(vism.HasExited ? vism.StandardError.ReadToEnd() : "still running")}");

        Assert.Equal(0, kill(vism.Id, 15));
        (int code, _, string err) = Finish(vism);
        Assert.True(code == 0, err);
        Assert.Contains($"device r0: devid 1, transport {transport} at {sockets[0]}", err);
        Assert.All(sockets, s => Assert.False(File.Exists(s), $"{s} was left behind"));
        Assert.DoesNotContain("left the socket", err);
    }

    [Fact]
    public void RunExits1AndNamesTheDeviceWhenOneCannotStart()
    {
        using Process vism = Start("run", Config(transport: "failing-start"));
        (int code, _, string err) = Finish(vism);
        Assert.Equal(1, code);
        Assert.Contains("device p1: transport failing-start (plugin Faulty) cannot start: IOException: address already in use", err);
        Assert.False(File.Exists(Path.Combine(_dir["state"], StatusSocket.FileName)));
    }

    [Fact]
    public void RunWithABadConfigExits2AndStartsNothing()
    {
        string file = _dir["bad.toml"];
        File.WriteAllText(file, $"""
            [host]
            state-dir = "{_dir["state"]}"
            [[device]]
            name = "p0"
            region-size = "3MiB"
            [device.transport]
            kind = "mem"
            [device.memory]
            kind = "sample-shm"
            """);
        using Process vism = Start("run", file);
        (int code, _, string err) = Finish(vism);
        Assert.Equal(2, code);
        Assert.Contains($"{file}:5:15: device[0].region-size: 3MiB is not a valid region size", err);
        Assert.False(Directory.Exists(_dir["state"]), "a rejected config must not create anything");
    }
}
