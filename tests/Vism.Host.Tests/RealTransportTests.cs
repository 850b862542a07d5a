using Microsoft.Extensions.Logging.Abstractions;
using Vism.Host.Commands;
using Vism.Host.Config;
using Vism.Host.Plugins;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary>The in-repo plugins as the host's build deploys them: the example configs validate, and
/// the demo runs over each real transport and memory backend.</summary>
public sealed class RealTransportTests : IClassFixture<PluginFixture>, IDisposable
{
    private readonly PluginFixture _plugins;
    private readonly TempDir _dir = new("vism-real");
    private readonly string _shm = Path.Combine("/dev/shm", $"vism-test-{Guid.NewGuid():N}"[..24]);

    public RealTransportTests(PluginFixture plugins) => _plugins = plugins;

    public void Dispose()
    {
        _dir.Dispose();
        try { Directory.Delete(_shm, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    public static TheoryData<string> ConfigFiles()
    {
        var data = new TheoryData<string>();
        foreach (string f in Directory.GetFiles(Path.Combine(TestPlugins.Repository, "config"), "*.toml").Order(StringComparer.Ordinal))
            data.Add(Path.GetFileName(f));
        return data;
    }

    [Fact]
    public void ConfigHoldsTheDefaultAndOneExamplePerTransportMemoryEventsCombination()
    {
        var expected = Combinations().Cast<object[]>().Select(row => $"{row[0]}-{row[1]}-{row[2]}.toml").Append("default.toml").Order(StringComparer.Ordinal);
        Assert.Equal(expected, ConfigFiles().Cast<object[]>().Select(row => (string)row[0]));
    }

    [Fact]
    public void TheHostBuildDeploysEveryInRepoPlugin()
    {
        string[] projects = Directory.GetDirectories(Path.Combine(TestPlugins.Repository, "plugins"))
            .SelectMany(d => Directory.GetFiles(d, "*.csproj")).Select(Path.GetFileNameWithoutExtension).Order().ToArray()!;
        Assert.NotEmpty(projects);
        using PluginCatalog catalog = PluginCatalog.Load([TestPlugins.InRepoPluginsDir], NullLogger.Instance);
        Assert.Empty(catalog.Failures);
        Assert.Equal(projects, catalog.Plugins.Select(p => p.Name).Order());
    }

    [SkippableTheory]
    [MemberData(nameof(ConfigFiles))]
    public void EveryExampleConfigIsValid(string name)
    {
        string text = File.ReadAllText(Path.Combine(TestPlugins.Repository, "config", name));
        if (text.Contains("\"hugetlb\"")) Machine.RequireHugePages(4);
        // Validate a copy whose host directories are private to the test, so nothing of a running host is touched.
        string file = _dir[name];
        File.WriteAllText(file, text.Replace("\"/var/lib/vism\"", $"\"{_dir["state"]}\"").Replace("\"/run/vism\"", $"\"{_dir["sockets"]}\""));
        using PluginCatalog catalog = PluginCatalog.Load([TestPlugins.InRepoPluginsDir], NullLogger.Instance);
        ConfigLoader loader = ConfigLoader.Parse(file);
        VismConfig? config = loader.BindDevices(catalog);
        Assert.True(config is not null, string.Join("\n", loader.Errors.Sorted()));
        Assert.Equal(2, config.Devices.Count);
        Assert.All(config.Devices, d => Assert.NotNull(d.Events));
    }

    public static TheoryData<string, string, string> Combinations()
    {
        var data = new TheoryData<string, string, string>();
        foreach (string transport in new[] { "vhost-user", "mmio" })
            foreach (string memory in new[] { "file", "hugetlb" })
                foreach (string events in new[] { "vq", "irq" })
                    data.Add(transport, memory, events);
        return data;
    }

    [SkippableTheory]
    [MemberData(nameof(Combinations))]
    public async Task TheDemoRunsOverEachRealTransportAndMemory(string transport, string memory, string events)
    {
        if (memory == "hugetlb") Machine.RequireHugePages(8);
        string transportOptions = ""; // every transport with its defaults: EVENT_IRQ must work without vectors set (issue 14 point 1)
        string memoryOptions = memory == "file" ? $"directory = \"{_shm}\"" : "page-size = \"2MiB\"";
        string region = memory == "hugetlb" ? "2MiB" : "1MiB";
        string devices = string.Concat(Enumerable.Range(0, 2).Select(i => $"""

            [[device]]
            name = "d{i}"
            region-size = "{region}"
            window-size = "16MiB"
            [device.transport]
            kind = "{transport}"
            {transportOptions}
            [device.memory]
            kind = "{memory}"
            {memoryOptions}
            [device.events]
            kind = "mem-events"
            mode = "{events}"
            """));
        File.WriteAllText(_dir["demo.toml"], $"""
            [host]
            state-dir = "{_dir["state"]}"
            socket-dir = "{_dir["sockets"]}"
            """ + devices);
        var output = new StringWriter();
        var error = new StringWriter();
        string[] plugins = _plugins.SearchPaths.Append(TestPlugins.InRepoPluginsDir).SelectMany(p => new[] { "--plugins", p }).ToArray();
        int code = await Cli.InvokeAsync(["demo", _dir["demo.toml"], .. plugins], output, error);
        string text = output.ToString();
        Assert.True(code == 0, text + error);
        Assert.Contains($"peer A: connected to d0 through {transport}", text);
        Assert.Contains("peer B: read \"hello from peer A", text);
        Assert.Contains("peer A: read \"hello back from peer B", text);
        Assert.Contains("(the region was freed)", text);
        // Stopped cleanly: the transports removed their sockets.
        Assert.Empty(Directory.Exists(_dir["sockets"]) ? Directory.GetFileSystemEntries(_dir["sockets"]) : []);
    }

    private string IrqConfig(string transport, string transportOptions)
    {
        string file = _dir[$"irq-{transport}.toml"];
        File.WriteAllText(file, $"""
            [host]
            state-dir = "{_dir["state"]}"
            socket-dir = "{_dir["sockets"]}"
            [[device]]
            name = "d0"
            [device.transport]
            kind = "{transport}"
            {transportOptions}
            [device.memory]
            kind = "file"
            directory = "{_shm}"
            [device.events]
            kind = "irq"
            """);
        return file;
    }

    private async Task<(int Code, string Out, string Err)> Validate(string file)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = await Cli.InvokeAsync(["validate", file, "--plugins", TestPlugins.InRepoPluginsDir], output, error);
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task ValidateRefusesIrqEventsOverATransportWithoutVectors()
    {
        (int code, _, string error) = await Validate(IrqConfig("vhost-user", "vectors = 0"));
        Assert.Equal(ExitCodes.BadConfig, code);
        Assert.Contains(":13:1: device[0].events.kind: the device would offer VIRTIO_ISM_F_EVENT_IRQ, but its transport offers no per-region vector", error);
        (code, _, error) = await Validate(IrqConfig("mmio", "vectors = 0"));
        Assert.Equal(ExitCodes.BadConfig, code);
        Assert.Contains("device[0].events.kind: the device would offer VIRTIO_ISM_F_EVENT_IRQ", error);
    }

    [Fact]
    public async Task ValidateWarnsThatQemuCannotDeliverPerRegionVectorsOverVhostUser()
    {
        (int code, string output, string error) = await Validate(IrqConfig("vhost-user", ""));
        Assert.True(code == ExitCodes.Ok, error);
        Assert.Contains("valid, 1 device(s)", output);
        Assert.Contains("vism: warning: ", error);
        Assert.Contains("device[0].events.kind: EVENT_IRQ cannot deliver per-region interrupts to a guest here: QEMU 11.1's vhost-user-test-device-pci gives the guest one MSI-X vector", error);
        // MMIO: each vector is an interrupt line of its own; nothing to warn about.
        (code, _, error) = await Validate(IrqConfig("mmio", ""));
        Assert.True(code == ExitCodes.Ok, error);
        Assert.DoesNotContain("warning", error);
    }
}
