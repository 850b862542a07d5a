using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Conformance;
using Vism.Conformance.Reports;
using Vism.Host.Commands;
using Vism.Host.Composition;
using Vism.Host.Config;
using Vism.Host.Plugins;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary>What an operator meets: status output when nothing runs, metrics, errors that name the key,
/// line and cause, the systemd units, the JUnit file.</summary>
public sealed class OperatorTests : IDisposable
{
    private readonly TempDir _dir = new("vism-ops");

    public void Dispose() => _dir.Dispose();

    private static async Task<(int Code, string Out, string Err)> Vism(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = await Cli.InvokeAsync([.. args, "--plugins", TestPlugins.InRepoPluginsDir], output, error);
        return (code, output.ToString(), error.ToString());
    }

    private string Write(string toml)
    {
        string file = _dir["vism.toml"];
        File.WriteAllText(file, toml);
        return file;
    }

    private string Devices => ServiceTests.DeviceToml("ism0", "vhost-user", _dir["mem"]).TrimEnd();

    [Fact]
    public async Task StatusJson_WithNoHost_PrintsAJsonErrorObjectAndExits1()
    {
        (int code, string output, string error) = await Vism("status", "--json", "--state-dir", _dir["nothing"]);
        Assert.Equal(ExitCodes.Failed, code);
        using JsonDocument doc = JsonDocument.Parse(output);
        Assert.Equal("no-host", doc.RootElement.GetProperty("error").GetString());
        Assert.Contains(_dir["nothing"], doc.RootElement.GetProperty("message").GetString());
        Assert.Contains("no host is running", error);

        (code, output, _) = await Vism("status", "--format", "prometheus", "--state-dir", _dir["nothing"]);
        Assert.Equal(ExitCodes.Failed, code);
        Assert.Contains("vism_up 0\n", output);
    }

    [Fact]
    public async Task StatusPrometheus_ReportsDevicesCountersAndMemoryInTheTextFormat()
    {
        string file = Write($"""
            [host]
            state-dir = "{_dir["state"]}"
            socket-dir = "{_dir["sockets"]}"
            {Devices}
            """);
        (VismConfig config, PluginCatalog catalog) = ConfigLoader.Load(file, [TestPlugins.InRepoPluginsDir], NullLogger.Instance);
        using (catalog)
        {
            await using HostRuntime runtime = await HostRuntime.StartAsync(config, NullLoggerFactory.Instance);
            (int code, string output, string error) = await Vism("status", "--format", "prometheus", "--state-dir", _dir["state"]);
            Assert.True(code == 0, error);
            Assert.Contains("vism_up 1\n", output);
            Assert.Contains("vism_devices 1\n", output);
            Assert.Contains("# TYPE vism_device_memory_used_bytes gauge\n", output);
            Assert.Contains("vism_device_max_regions{device=\"ism0\"} 32\n", output);
            Assert.Contains("vism_device_connected{device=\"ism0\"} 0\n", output);
            Assert.Contains("# TYPE vism_device_events_total counter\n", output);
            // Every line is a comment or `name{labels} value` (what node_exporter's textfile collector parses).
            Assert.All(output.TrimEnd('\n').Split('\n'), line =>
                Assert.Matches(@"^(# (HELP|TYPE) vism_[a-z_]+ .+|vism_[a-z_]+(\{[a-z]+=""[^""]*""(,[a-z]+=""[^""]*"")*\})? -?[0-9.e+]+)$", line));
        }
    }

    [Fact]
    public async Task Apply_RestartsAChangedDevice_AndRefusesAHostChangeKeepingTheRunningSet()
    {
        string host = $"""
            [host]
            state-dir = "{_dir["state"]}"
            socket-dir = "{_dir["sockets"]}"
            """;
        string file = Write(host + "\n" + Devices + "\n" + ServiceTests.DeviceToml("ism1", "mmio", _dir["mem"]));
        (VismConfig config, PluginCatalog catalog) = ConfigLoader.Load(file, [TestPlugins.InRepoPluginsDir], NullLogger.Instance);
        using (catalog)
        {
            await using HostRuntime runtime = await HostRuntime.StartAsync(config, NullLoggerFactory.Instance);
            Vism.Core.IsmDevice ism0 = runtime.Devices[0].Device!;

            Write(host + "\n" + Devices + "\n" + ServiceTests.DeviceToml("ism1", "mmio", _dir["mem"]).Replace("window-size = \"4MiB\"", "window-size = \"8MiB\""));
            ConfigLoader changed = ConfigLoader.Parse(file);
            ReloadResult result = await runtime.ApplyAsync(changed.BindDevices(catalog)!);
            Assert.True(result.Ok, string.Join("; ", result.Errors));
            Assert.Equal(["ism1"], result.Restarted);
            Assert.Equal(["ism0"], result.Kept);
            Assert.Same(ism0, runtime.Devices[0].Device);
            Assert.Equal(96, runtime.Devices[1].Settings.Description.MaxRegions);

            Write(host.Replace(_dir["sockets"], _dir["elsewhere"]) + "\n" + Devices);
            ConfigLoader moved = ConfigLoader.Parse(file);
            result = await runtime.ApplyAsync(moved.BindDevices(catalog)!);
            Assert.False(result.Ok);
            Assert.Contains(result.Errors, e => e.StartsWith($"host.socket-dir changed from \"{_dir["sockets"]}\" to \"{_dir["elsewhere"]}\"", StringComparison.Ordinal));
            Assert.Equal(["ism0", "ism1"], runtime.Devices.Select(d => d.Settings.Name));
            Assert.True(File.Exists(_dir["sockets/ism1.mmio.sock"]));
        }
    }

    [Fact]
    public async Task Start_WithASocketDirThatCannotBeCreated_NamesTheKeyTheLineAndTheCause()
    {
        string blocker = _dir["a-file"];
        File.WriteAllText(blocker, "");
        string file = Write($"""
            [host]
            state-dir = "{_dir["state"]}"
            socket-dir = "{blocker}/sockets"
            {Devices}
            """);
        (VismConfig config, PluginCatalog catalog) = ConfigLoader.Load(file, [TestPlugins.InRepoPluginsDir], NullLogger.Instance);
        using (catalog)
        {
            DeviceStartException ex = await Assert.ThrowsAsync<DeviceStartException>(() => HostRuntime.StartAsync(config, NullLoggerFactory.Instance));
            Assert.Contains($"{file}:3:14: host.socket-dir: cannot create the directory {blocker}/sockets: {blocker} is a file, not a directory", ex.Message);
        }
    }

    [Fact]
    public async Task Validate_WithOneMissingQuote_ReportsOneError()
    {
        string file = Write($"""
            [host]
            state-dir = "{_dir["state"]}"
            {Devices.Replace("name = \"ism0\"", "name = \"ism0")}
            """);
        (int code, _, string error) = await Vism("validate", file);
        Assert.Equal(ExitCodes.BadConfig, code);
        string[] lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith(file, StringComparison.Ordinal)).ToArray();
        Assert.Single(lines);
        Assert.StartsWith($"{file}:4:", lines[0]);
        Assert.Contains("vism: 1 error(s)", error);
    }

    [Fact]
    public async Task Validate_WithAnUnknownSocketOwnerOrGroup_NamesFileLineAndKey()
    {
        string file = Write($"""
            [host]
            socket-owner = "no-such-user-vism"
            socket-mode = "0668"
            {Devices.Replace("kind = \"vhost-user\"", "kind = \"vhost-user\"\nsocket-group = \"no-such-group-vism\"")}
            """);
        (int code, _, string error) = await Vism("validate", file);
        Assert.Equal(ExitCodes.BadConfig, code);
        Assert.Contains($"{file}:2:16: host.socket-owner: no user 'no-such-user-vism' exists on this system", error);
        Assert.Contains($"{file}:3:15: host.socket-mode: '0668' is not a permission mode", error);
        Assert.Contains($"{file}:10:1: device[0].transport.socket-group: no group 'no-such-group-vism' exists on this system", error);
    }

    [Fact]
    public void JUnitReport_IsWrittenWithoutAByteOrderMark()
    {
        string path = _dir["junit.xml"];
        JUnitReport.Write(new MatrixReport([], [], DateTimeOffset.UnixEpoch, TimeSpan.Zero), path);
        byte[] bytes = File.ReadAllBytes(path);
        Assert.Equal("<?xml"u8.ToArray(), bytes[..5]);
    }

    [SkippableFact]
    public void SystemdUnits_PassSystemdAnalyzeVerify()
    {
        Skip.IfNot(File.Exists("/usr/bin/systemd-analyze"), "systemd-analyze is not installed (apt-get install systemd)");
        string vism = Path.Combine(AppContext.BaseDirectory, "vism");
        string units = Path.Combine(TestPlugins.Repository, "packaging", "systemd");
        var files = new List<string>();
        foreach (string unit in Directory.GetFiles(units))
        {
            // The units name the installed /usr/bin/vism; verify them against this build's program.
            string copy = _dir[Path.GetFileName(unit)];
            File.WriteAllText(copy, File.ReadAllText(unit).Replace("/usr/bin/vism", vism, StringComparison.Ordinal));
            files.Add(copy);
        }
        Assert.Contains(files, f => f.EndsWith("vism.service", StringComparison.Ordinal));
        Assert.Contains(files, f => f.EndsWith("vism@.service", StringComparison.Ordinal));
        var psi = new ProcessStartInfo("systemd-analyze") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { "verify", "--man=no" }.Concat(files)) psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        string all = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0 && all.Trim().Length == 0, all);
        string service = File.ReadAllText(Path.Combine(units, "vism.service"));
        Assert.Matches(new Regex("^Type=notify$", RegexOptions.Multiline), service);
        Assert.Matches(new Regex("^SystemCallFilter=@system-service$", RegexOptions.Multiline), service);
        Assert.DoesNotMatch(new Regex("^MemoryDenyWriteExecute=yes", RegexOptions.Multiline), service);
    }
}
