using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Host.Commands;
using Vism.Host.Composition;
using Vism.Host.Config;
using Vism.Host.Plugins;
using Vism.Host.Status;
using Vism.Testing;

namespace Vism.Host.Tests;

public sealed class CompositionTests : IClassFixture<PluginFixture>, IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);
    private readonly PluginFixture _plugins;
    private readonly TempDir _dir = new("vism-cmp");
    private readonly PluginCatalog _catalog;

    public CompositionTests(PluginFixture plugins)
    {
        _plugins = plugins;
        _catalog = PluginCatalog.Load(plugins.SearchPaths, NullLogger.Instance);
    }

    public void Dispose()
    {
        _catalog.Dispose();
        _dir.Dispose();
    }

    private string Toml(string transport = "mem", string events = "mode = \"vq\"", int devices = 2) =>
        $"""
        [host]
        gid = 0x1234
        state-dir = "{_dir["state"]}"
        socket-dir = "{_dir["sockets"]}"
        loops = 2
        """ + string.Concat(Enumerable.Range(0, devices).Select(i => $"""

        [[device]]
        name = "dev{i}"
        window-size = "16MiB"
        [device.transport]
        kind = "{transport}"
        {(transport == "mem" ? $"label = \"L{i}\"" : "")}
        [device.memory]
        kind = "sample-shm"
        capacity = "8MiB"
        [device.events]
        kind = "mem-events"
        {events}
        """));

    private VismConfig Config(string toml)
    {
        string file = _dir["vism.toml"];
        File.WriteAllText(file, toml);
        ConfigLoader loader = ConfigLoader.Parse(file);
        VismConfig? config = loader.BindDevices(_catalog);
        Assert.True(config is not null, string.Join("\n", loader.Errors.Errors));
        return config;
    }

    [Fact]
    public async Task EachDeviceGetsItsOwnOptionsDescriptionLoopAndCountersThroughDi()
    {
        await using HostRuntime runtime = await HostRuntime.StartAsync(Config(Toml()), NullLoggerFactory.Instance);
        Assert.Equal(2, runtime.Devices.Count);
        Assert.Equal(0x1234UL, runtime.Ism.Gid);
        for (int i = 0; i < 2; i++)
        {
            RunningDevice d = runtime.Devices[i];
            dynamic t = d.Transport!;
            Assert.Equal($"L{i}", (string)t.Options.Label);
            Assert.Same(d.Settings.Transport.Options, (object)t.Options);
            Assert.Equal($"dev{i}", (string)t.Description.Name);
            Assert.Same(d.Loop, (object)t.Loop);
            Assert.Same(d.Counters, (object)t.Counters);
            Assert.Equal(0x1234UL, (ulong)t.Host.Gid);
            Assert.Equal(_dir["sockets"], (string)t.Host.SocketDirectory);
            Assert.True((bool)t.CreatedOnLoop);
            Assert.True((bool)t.LoggerOk);
            Assert.True((bool)t.Started);
            Assert.Equal($"mem:dev{i}:L{i}", d.Endpoint);
            Assert.Equal((ulong)(i + 1), d.Device!.DevId);
        }
        Assert.NotSame(runtime.Devices[0].Loop, runtime.Devices[1].Loop);
    }

    [Fact]
    public async Task TwoComposedDevicesShareARegionBackedByTheThirdPartyMemoryPlugin()
    {
        await using HostRuntime runtime = await HostRuntime.StartAsync(Config(Toml()), NullLoggerFactory.Instance);
        using IsmClient a = IsmClient.Start(runtime.Devices[0].ConnectDriver());
        using IsmClient b = IsmClient.Start(runtime.Devices[1].ConnectDriver());

        AllocReply alloc = a.Alloc(a.RegionSize);
        Assert.True(alloc.Ok);
        AttachReply attach = b.Attach(alloc.Token);
        Assert.True(attach.Ok);
        "shared!"u8.CopyTo(a.Region(alloc.Offset, 7));
        a.Notify(alloc.Offset);
        Assert.Contains(attach.Offset, b.WaitEvent(Wait) ?? []);
        Assert.Equal("shared!"u8.ToArray(), b.Region(attach.Offset, 7).ToArray());

        StatusReport during = runtime.Report();
        RegionReport region = Assert.Single(during.Regions);
        Assert.Equal([1UL, 2UL], region.References.Select(r => r.DevId).Order());
        Assert.Equal(a.RegionSize, during.Devices[0].MemoryUsed);

        Assert.Equal(IsmControl.AckOk, b.Detach(attach.Offset));
        Assert.Equal(IsmControl.AckOk, a.Detach(alloc.Offset));
        StatusReport after = await Eventually(runtime, r => r.Regions.Count == 0 && r.Devices[0].MemoryUsed == 0);
        Assert.Empty(after.Regions);
        Assert.Equal(0UL, after.Devices[0].MemoryUsed);
        Assert.Equal(a.RegionSize, after.Devices[0].MemoryHighWater);
    }

    [Fact]
    public async Task TheStatusSocketServesDevicesRegionsAndCountersAndGoesAwayOnStop()
    {
        HostRuntime runtime = await HostRuntime.StartAsync(Config(Toml()), NullLoggerFactory.Instance);
        string socket = Path.Combine(_dir["state"], StatusSocket.FileName);
        try
        {
            using IsmClient a = IsmClient.Start(runtime.Devices[0].ConnectDriver());
            Assert.True(a.Alloc(a.RegionSize).Ok);

            string? json = StatusSocket.TryRead(socket, Wait);
            Assert.NotNull(json);
            StatusReport report = JsonSerializer.Deserialize<StatusReport>(json, StatusReport.Json)!;
            Assert.Equal("0x0000000000001234", report.Gid);
            Assert.Equal(["dev0", "dev1"], report.Devices.Select(d => d.Name));
            Assert.Equal([1UL, 2UL], report.Devices.Select(d => d.DevId));
            Assert.Equal("mem", report.Devices[0].Transport);
            Assert.Equal("sample-shm", report.Devices[0].Memory);
            Assert.Single(report.Regions);
            Assert.Equal(1, report.Devices[0].RegionsInUse);

            var output = new StringWriter();
            Assert.Equal(ExitCodes.Ok, await Cli.InvokeAsync(["status", "--state-dir", _dir["state"]], output, new StringWriter()));
            Assert.Contains("device dev0: devid 1, connected", output.ToString());
            Assert.Contains("regions 1/", output.ToString());
        }
        finally
        {
            await runtime.DisposeAsync();
        }
        Assert.False(File.Exists(socket));
        Assert.Null(StatusSocket.TryRead(socket, TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public async Task ASecondHostWithTheSameStateDirectoryIsRefused()
    {
        await using HostRuntime first = await HostRuntime.StartAsync(Config(Toml()), NullLoggerFactory.Instance);
        DeviceStartException ex = await Assert.ThrowsAsync<DeviceStartException>(() => HostRuntime.StartAsync(Config(Toml()), NullLoggerFactory.Instance));
        Assert.Contains("another vism host is running with state directory", ex.Message);
        Assert.Null(ex.Device);
    }

    [Fact]
    public async Task StoppingDisposesEveryPluginInstance()
    {
        HostRuntime runtime = await HostRuntime.StartAsync(Config(Toml()), NullLoggerFactory.Instance);
        List<dynamic> transports = runtime.Devices.Select(d => (dynamic)d.Transport!).ToList();
        List<dynamic> events = runtime.Devices.Select(d => (dynamic)d.Events!).ToList();
        await runtime.DisposeAsync();
        Assert.All(transports, t => Assert.True((bool)t.Disposed));
        Assert.All(events, e => Assert.True((bool)e.Disposed));
        Assert.Equal(0, runtime.Ism.DeviceCount);
    }

    [Fact]
    public async Task ASocketATransportLeftBehindIsRemovedOnStopAndOtherFilesAreNot()
    {
        Directory.CreateDirectory(_dir["sockets"]);
        string toml = Toml(devices: 1) + $"""

            [[device]]
            name = "kit0"
            [device.transport]
            kind = "kit-transport"
            socket-path = "{_dir["sockets/left.sock"]}"
            [device.memory]
            kind = "sample-shm"
            [[device]]
            name = "kit1"
            [device.transport]
            kind = "kit-transport"
            socket-path = "{_dir["sockets/file"]}"
            [device.memory]
            kind = "sample-shm"
            """;
        HostRuntime runtime = await HostRuntime.StartAsync(Config(toml), NullLoggerFactory.Instance);
        // The kit transport never removes anything: stand in for a transport that forgets its socket.
        using (var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, 0))
            socket.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(_dir["sockets/left.sock"]));
        File.WriteAllText(_dir["sockets/file"], "not a socket");
        await runtime.DisposeAsync();
        Assert.False(File.Exists(_dir["sockets/left.sock"]));
        Assert.True(File.Exists(_dir["sockets/file"]));
    }

    [Theory]
    [InlineData("throwing", "transport throwing (plugin Faulty) cannot be created: InvalidOperationException: constructor boom")]
    [InlineData("needs-dep", "transport needs-dep (plugin Faulty) cannot be created: missing dependency Faulty.Dep")]
    [InlineData("failing-start", "transport failing-start (plugin Faulty) cannot start: IOException: address already in use")]
    public async Task ADeviceThatCannotStartNamesDeviceAndPluginAndNothingStaysUp(string kind, string reason)
    {
        string toml = Toml() + $"""

            [[device]]
            name = "bad"
            window-size = "16MiB"
            [device.transport]
            kind = "{kind}"
            [device.memory]
            kind = "sample-shm"
            """;
        DeviceStartException ex = await Assert.ThrowsAsync<DeviceStartException>(() => HostRuntime.StartAsync(Config(toml), NullLoggerFactory.Instance));
        Assert.Equal("bad", ex.Device);
        Assert.StartsWith($"device bad: {reason}", ex.Message);
        Assert.False(File.Exists(Path.Combine(_dir["state"], StatusSocket.FileName)));
        // The same state directory is free again: the good devices were stopped.
        await using HostRuntime again = await HostRuntime.StartAsync(Config(Toml()), NullLoggerFactory.Instance);
        Assert.Equal(2, again.Devices.Count);
    }

    [Theory]
    [InlineData("mode = \"vq\"")]
    [InlineData("mode = \"irq\"")]
    public async Task TheDemoDrivesTwoPeersThroughEveryStep(string events)
    {
        File.WriteAllText(_dir["demo.toml"], Toml(events: events));
        var output = new StringWriter();
        var error = new StringWriter();
        string[] plugins = _plugins.SearchPaths.SelectMany(p => new[] { "--plugins", p }).ToArray();
        int code = await Cli.InvokeAsync(["demo", _dir["demo.toml"], .. plugins], output, error);
        string text = output.ToString();
        Assert.True(code == 0, text + error);
        Assert.Contains("peer A: connected to dev0 through mem", text);
        Assert.Contains("peer A: ALLOC 1MiB -> token 0x", text);
        Assert.Contains("peer B: ATTACH token 0x", text);
        Assert.Contains("peer B: read \"hello from peer A", text);
        Assert.Contains("peer A: read \"hello back from peer B", text);
        Assert.Contains(events.Contains("vq") ? "eventq event: region at offset 0x0 updated" : "vector 0 fired", text);
        Assert.Contains("status: 1 region of 1MiB, referenced by devids 1 and 2", text);
        Assert.Contains("status: no regions; memory used dev0 0, dev1 0 (the region was freed)", text);
        Assert.Contains("steps passed; devices stopped", text);
    }

    [Fact]
    public async Task TheDemoRefusesAConfigWithOneDevice()
    {
        File.WriteAllText(_dir["one.toml"], Toml(devices: 1));
        var error = new StringWriter();
        string[] plugins = _plugins.SearchPaths.SelectMany(p => new[] { "--plugins", p }).ToArray();
        Assert.Equal(ExitCodes.BadConfig, await Cli.InvokeAsync(["demo", _dir["one.toml"], .. plugins], new StringWriter(), error));
        Assert.Contains("the demo needs two", error.ToString());
    }

    private static async Task<StatusReport> Eventually(HostRuntime runtime, Func<StatusReport, bool> done)
    {
        DateTime until = DateTime.UtcNow + Wait;
        StatusReport r = runtime.Report();
        while (!done(r) && DateTime.UtcNow < until)
        {
            await Task.Delay(10);
            r = runtime.Report();
        }
        return r;
    }
}
