using Microsoft.Extensions.Logging.Abstractions;
using Vism.Host.Config;
using Vism.Host.Plugins;
using Vism.Testing;

namespace Vism.Host.Tests;

public sealed class ConfigValidationTests : IClassFixture<PluginFixture>, IDisposable
{
    private readonly TempDir _dir = new("vism-cfg");
    private readonly PluginCatalog _catalog;

    public ConfigValidationTests(PluginFixture plugins) =>
        _catalog = PluginCatalog.Load(plugins.SearchPaths, NullLogger.Instance);

    public void Dispose()
    {
        _catalog.Dispose();
        _dir.Dispose();
    }

    private const string Good = """
        [host]
        gid = 7
        sharing = "multi"
        socket-dir = "/tmp/vism-test-sockets"

        [[device]]
        name = "a"
        region-size = "2MiB"
        window-size = "1 GiB"
        [device.transport]
        kind = "kit-transport"
        queue-size = 64
        mode = "very-slow"
        timeout = "500ms"
        tags = ["x", "y"]
        [device.memory]
        kind = "sample-shm"
        capacity = "64MiB"
        [device.events]
        kind = "kit-events"

        [[device]]
        name = "b"
        max-regions = 16
        [device.transport]
        kind = "kit-transport"
        socket-path = "/tmp/vism-test-sockets/other.sock"
        [device.memory]
        kind = "sample-shm"
        """;

    private (VismConfig? Config, ConfigLoader Loader) Load(string toml)
    {
        string file = _dir["vism.toml"];
        File.WriteAllText(file, toml);
        ConfigLoader loader = ConfigLoader.Parse(file);
        return (loader.BindDevices(_catalog), loader);
    }

    private List<string> Errors(string toml)
    {
        (VismConfig? config, ConfigLoader loader) = Load(toml);
        Assert.Null(config);
        return loader.Errors.Sorted().Select(e => e.ToString().Replace(_dir["vism.toml"], "F")).ToList();
    }

    [Fact]
    public void AValidFileBindsHostDevicesAndEachPluginsOptions()
    {
        (VismConfig? config, ConfigLoader loader) = Load(Good);
        Assert.True(config is not null, string.Join("\n", loader.Errors.Errors));
        Assert.Equal(7UL, config.Host.Gid);
        Assert.Equal(Sharing.Multi, config.Host.Sharing);
        Assert.Equal("/tmp/vism-test-sockets", config.Host.SocketDirectory);
        Assert.Equal(2, config.Devices.Count);

        DeviceSettings a = config.Devices[0];
        Assert.Equal("a", a.Name);
        Assert.Equal(2UL << 20, a.Description.RegionSize);
        Assert.Equal(1UL << 30, a.Description.RegionsWindowSize + a.Description.NotifyWindowSize);
        Assert.Equal("kit-transport", a.Transport.Registration.Name);
        dynamic t = a.Transport.Options;
        Assert.Equal(64, (int)t.QueueSize);
        Assert.Equal("VerySlow", ((object)t.Mode).ToString());
        Assert.Equal(TimeSpan.FromMilliseconds(500), (TimeSpan)t.Timeout);
        Assert.Equal(new[] { "x", "y" }, (string[])t.Tags);
        dynamic m = a.Memory.Options;
        Assert.Equal(64UL << 20, (ulong)m.Capacity);
        Assert.Equal("kit-events", a.Events!.Registration.Name);
        Assert.Equal(["/tmp/vism-test-sockets/a.sock"], a.Endpoints);

        DeviceSettings b = config.Devices[1];
        Assert.InRange(b.Description.MaxRegions, 16, 31);
        Assert.Equal(32UL << 20, b.Description.RegionsWindowSize + b.Description.NotifyWindowSize);
        Assert.Null(b.Events);
        Assert.Equal(["/tmp/vism-test-sockets/other.sock"], b.Endpoints);
    }

    [Fact]
    public void DefaultsApplyWhenKeysAreLeftOut()
    {
        (VismConfig? config, _) = Load("""
            [[device]]
            name = "d"
            [device.transport]
            kind = "kit-transport"
            [device.memory]
            kind = "sample-shm"
            """);
        Assert.NotNull(config);
        Assert.Null(config.Host.Gid);
        Assert.Equal(Sharing.Pair, config.Host.Sharing);
        Assert.Equal(HostSettings.DefaultStateDirectory, config.Host.StateDirectory);
        Assert.Equal(1, config.Host.Loops); // devices on one loop route notifies inline (docs/benchmarks.md, Event path)
        DeviceSettings d = config.Devices[0];
        Assert.Equal(44u, d.Description.VirtioId);
        Assert.Equal(ConfigLoader.DefaultRegionSize, d.Description.RegionSize);
        Assert.Equal(ConfigLoader.DefaultNotifySize, d.Description.NotifySize);
        Assert.Equal(ConfigLoader.DefaultWindowSize, d.Description.RegionsWindowSize + d.Description.NotifyWindowSize);
        Assert.Equal(62, d.Description.MaxRegions); // 62 MiB REGIONS + 2 MiB NOTIFY: both 2 MiB aligned
        Assert.Equal(256, (int)((dynamic)d.Transport.Options).QueueSize);
    }

    [Fact]
    public void AMisspeltKeyIsAnErrorAtItsLineAndColumnWithASuggestion()
    {
        List<string> errors = Errors("""
            [host]
            sharng = "pair"
            [[device]]
            name = "d"
            regoin-size = "1MiB"
            [device.transport]
            kind = "kit-transport"
              sockt-path = "/tmp/x.sock"
            [device.memory]
            kind = "sample-shm"
            """);
        Assert.Equal(3, errors.Count);
        Assert.StartsWith("F:2:1: host.sharng: unknown key 'sharng'; did you mean 'sharing'?", errors[0]);
        Assert.StartsWith("F:5:1: device[0].regoin-size: unknown key 'regoin-size'; did you mean 'region-size'?", errors[1]);
        Assert.StartsWith("F:8:3: device[0].transport.sockt-path: unknown key 'sockt-path'; did you mean 'socket-path'?", errors[2]);
    }

    [Fact]
    public void WrongTypesAndBadSizesAreAllReportedAtOnce()
    {
        List<string> errors = Errors("""
            [host]
            loops = "two"
            log-level = "loud"
            [[device]]
            name = "d"
            region-size = "3MiB"
            window-size = "100MB"
            notify-size = 3
            device-id = 0
            [device.transport]
            kind = "kit-transport"
            queue-size = "big"
            tags = ["a", 1]
            [device.memory]
            kind = "sample-shm"
            capacity = -1
            """);
        Assert.Equal(
        [
            "F:2:9: host.loops: expected an integer, found the string \"two\"",
            "F:3:13: host.log-level: 'loud' is not one of: \"trace\", \"debug\", \"information\", \"warning\", \"error\", \"critical\", \"none\"",
            "F:6:15: device[0].region-size: 3MiB is not a valid region size: it must be a power of two of at least 4KiB",
            "F:7:15: device[0].window-size: '100MB' is ambiguous: write binary units (KiB, MiB, GiB, TiB) or a number of bytes",
            "F:8:15: device[0].notify-size: 3 bytes: notify-size must be a power of two from 1 to 4096",
            "F:9:13: device[0].device-id: 0 is not a virtio device ID: choose 1..61375 (ISM is 44)",
            "F:12:14: device[0].transport.queue-size: expected an integer, found the string \"big\"",
            "F:13:8: device[0].transport.tags: item 1: expected a string, found the integer 1",
            "F:16:12: device[0].memory.capacity: -1 is negative: a size is a number of bytes",
        ], errors);
    }

    [Fact]
    public void ADurationOptionAcceptsMicrosecondsAndABadDurationNamesTheUnits()
    {
        static string WithTimeout(string value) => $$"""
            [[device]]
            name = "d"
            [device.transport]
            kind = "kit-transport"
            timeout = "{{value}}"
            [device.memory]
            kind = "sample-shm"
            """;
        (VismConfig? config, ConfigLoader loader) = Load(WithTimeout("250us"));
        Assert.True(config is not null, string.Join("\n", loader.Errors.Errors));
        dynamic t = config.Devices[0].Transport.Options;
        Assert.Equal(TimeSpan.FromMicroseconds(250), (TimeSpan)t.Timeout);

        Assert.Equal(["F:5:11: device[0].transport.timeout: expected a duration such as \"50us\", \"500ms\", \"5s\", \"2m\" or \"1h\", found the string \"250 fortnights\""],
            Errors(WithTimeout("250 fortnights")));
    }

    [Fact]
    public void WindowLimitsAreEnforced()
    {
        Assert.Contains(Errors(DeviceWith("window-size = \"128GiB\"")), e => e.Contains("window-size: 128GiB is too large: at most 64GiB"));
        Assert.Contains(Errors(DeviceWith("window-size = \"96MiB\"")), e => e.Contains("window-size: 96MiB is not a power of two"));
        Assert.Contains(Errors(DeviceWith("window-size = \"1MiB\"")), e => e.Contains("window-size: a 1MiB window has no room for a REGIONS and a NOTIFY window of 2MiB each"));
        Assert.Contains(Errors(DeviceWith("window-size = \"1GiB\"\nmax-regions = 4")), e => e.Contains("give either window-size or max-regions, not both"));
        Assert.Contains(Errors(DeviceWith("region-size = \"1GiB\"\nmax-regions = 65536")), e => e.Contains("do not fit in a window of at most 64GiB"));
    }

    [Fact]
    public void DeviceLimits_AreBoundAndChecked()
    {
        (VismConfig? config, ConfigLoader loader) = Load(DeviceWith("requests-per-turn = 4\ndescriptors-per-turn = 100\nmax-in-flight = 8"));
        Assert.True(config is not null, string.Join("\n", loader.Errors.Errors));
        Assert.Equal(new Vism.Core.DeviceLimits { RequestsPerTurn = 4, DescriptorsPerTurn = 100, MaxInFlight = 8 }, config.Devices[0].Limits);
        Assert.Equal(Vism.Core.DeviceLimits.Default, Load(DeviceWith("")).Config!.Devices[0].Limits);
        Assert.Contains(Errors(DeviceWith("requests-per-turn = 0")), e => e.Contains("device[0].requests-per-turn: 0: choose 1..65536"));
        Assert.Contains(Errors(DeviceWith("max-in-flight = 1")), e => e.Contains("device[0].max-in-flight: 1: choose 2..65536"));
    }

    private static string DeviceWith(string keys) => $"""
        [[device]]
        name = "d"
        {keys}
        [device.transport]
        kind = "kit-transport"
        [device.memory]
        kind = "sample-shm"
        """;

    [Fact]
    public void UnknownKindsListTheInstalledOnes()
    {
        List<string> errors = Errors("""
            [[device]]
            name = "d"
            [device.transport]
            kind = "vhost-usr"
            [device.memory]
            kind = "sample-shm"
            [device.events]
            kind = "irq"
            """);
        Assert.Equal(
        [
            "F:4:8: device[0].transport.kind: no transport plugin 'vhost-usr' is installed (installed: failing-start, kit-transport, mem, needs-dep, throwing)",
            "F:8:8: device[0].events.kind: no events plugin 'irq' is installed (installed: kit-events, mem-events)",
        ], errors);
    }

    [Fact]
    public void MissingSectionsNameAndKindAreErrors()
    {
        List<string> errors = Errors("""
            [[device]]
            region-size = "1MiB"
            [device.transport]
            queue-size = 4
            """);
        Assert.Equal(
        [
            "F:1:3: device[0].memory: missing [device.memory] with a kind (installed: sample-shm)",
            "F:1:3: device[0].name: every device needs a name (name = \"ism0\")",
            "F:3:9: device[0].transport.kind: missing kind (installed: failing-start, kit-transport, mem, needs-dep, throwing)",
        ], errors.Order(StringComparer.Ordinal).ToList());
    }

    [Fact]
    public void DuplicateDeviceNamesAndEndpointsAreErrors()
    {
        List<string> errors = Errors("""
            [host]
            socket-dir = "/tmp/s"
            [[device]]
            name = "a"
            [device.transport]
            kind = "kit-transport"
            [device.memory]
            kind = "sample-shm"
            [[device]]
            name = "a"
            [device.transport]
            kind = "kit-transport"
            [device.memory]
            kind = "sample-shm"
            [[device]]
            name = "c"
            [device.transport]
            kind = "kit-transport"
            socket-path = "/tmp/s/../s/a.sock"
            [device.memory]
            kind = "sample-shm"
            """);
        Assert.Equal(
        [
            "F:10:8: device[1].name: device name 'a' is already used by device[0] (line 4)",
            "F:19:1: device[2].transport.socket-path: /tmp/s/a.sock is already used by device[0].transport.socket-path of device 'a'",
        ], errors);
    }

    [Fact]
    public void APluginsOwnValidationReportsOnItsKeysAndOnDeviceKeys()
    {
        List<string> errors = Errors("""
            [[device]]
            name = "d"
            region-size = "2MiB"
            [device.transport]
            kind = "kit-transport"
            queue-size = 100
            buffer = 1024
            [device.memory]
            kind = "sample-shm"
            directory = "/no/such/dir"
            capacity = "1MiB"
            """);
        Assert.Equal(
        [
            "F:3:1: device[0].region-size: larger than the kit allows",
            "F:3:1: device[0].region-size: a region (2097152 bytes) is larger than capacity (1048576 bytes)",
            "F:6:1: device[0].transport.queue-size: 100 is not a power of two",
            "F:10:1: device[0].memory.directory: /no/such/dir does not exist",
        ], errors);
    }

    [Fact]
    public void TomlSyntaxErrorsAndDuplicateKeysCarryPositions()
    {
        List<string> syntax = Errors("""
            [host]
            gid =
            loops = 2
            """);
        Assert.Single(syntax);
        Assert.StartsWith("F:2:6: host.gid: ", syntax[0]);

        List<string> dup = Errors("""
            [host]
            loops = 1
            loops = 2
            """);
        Assert.Single(dup);
        Assert.StartsWith("F:3:1: ", dup[0]);
        Assert.Contains("already defined", dup[0]);
    }

    [Fact]
    public void RelativePathsResolveAgainstTheConfigFilesDirectory()
    {
        Directory.CreateDirectory(_dir["plugdir"]);
        (VismConfig? config, ConfigLoader loader) = Load("""
            [host]
            state-dir = "state"
            plugin-paths = ["plugdir"]
            [[device]]
            name = "d"
            [device.transport]
            kind = "kit-transport"
            [device.memory]
            kind = "sample-shm"
            """);
        Assert.True(config is not null, string.Join("\n", loader.Errors.Errors));
        Assert.Equal(_dir["state"], config.Host.StateDirectory);
        Assert.Equal([_dir["plugdir"]], config.Host.PluginPaths);
    }

    [Fact]
    public void AMissingPluginPathIsAnError()
    {
        List<string> errors = Errors("""
            [host]
            plugin-paths = ["/nonexistent/vism-plugins"]
            """);
        Assert.StartsWith("F:2:17: host.plugin-paths[0]: plugin directory /nonexistent/vism-plugins does not exist", errors[0]);
    }

    [Fact]
    public void BusyPollIsADurationUpToTenMillisecondsAndDefaultsToZero()
    {
        (VismConfig? config, _) = Load(Good);
        Assert.Equal(TimeSpan.Zero, config!.Host.BusyPoll);
        (config, _) = Load(Good.Replace("gid = 7", "gid = 7\nbusy-poll = \"200us\""));
        Assert.Equal(TimeSpan.FromMicroseconds(200), config!.Host.BusyPoll);
        Assert.Equal(["F:2:13: host.busy-poll: 20ms: choose 0s..10ms (default 0s: loops sleep as soon as they are idle)"],
            Errors("[host]\nbusy-poll = \"20ms\"\n" + Good[(Good.IndexOf("[[device]]", StringComparison.Ordinal))..]));
    }

    [Fact]
    public void AFileWithoutDevicesIsAnError()
    {
        Assert.Equal(["F:1:1: device: no [[device]] is configured: add at least one (see config/default.toml)"], Errors("[host]\nloops = 1\n"));
    }

    [Fact]
    public void DamagedFilesAreReportedAsErrorsNeverThrown()
    {
        // Deterministic mutations of a valid file: deleted, duplicated and replaced characters.
        var random = new Random(1234);
        const string alphabet = "[]{}=\".,#\n \\'0x1aZ-_.\t";
        string file = _dir["damaged.toml"];
        int invalid = 0;
        for (int i = 0; i < 1500; i++)
        {
            var text = new System.Text.StringBuilder(Good);
            for (int m = random.Next(1, 4); m > 0; m--)
            {
                int at = random.Next(text.Length);
                switch (random.Next(3))
                {
                    case 0: text.Remove(at, Math.Min(random.Next(1, 6), text.Length - at)); break;
                    case 1: text.Insert(at, text.ToString(at, Math.Min(random.Next(1, 12), text.Length - at))); break;
                    default: text[at] = alphabet[random.Next(alphabet.Length)]; break;
                }
            }
            File.WriteAllText(file, text.ToString());
            ConfigLoader loader = ConfigLoader.Parse(file);
            VismConfig? config = loader.BindDevices(_catalog);
            Assert.Equal(config is null, loader.Errors.Any);
            if (config is null)
            {
                invalid++;
                Assert.All(loader.Errors.Errors, e => Assert.True(e.Pos.Line >= 1 && e.Pos.Column >= 1 && e.Key.Length > 0 && e.Message.Length > 0, e.ToString()));
            }
        }
        Assert.InRange(invalid, 500, 1500);
    }

    // Found by fuzzing (fuzz/Vism.Fuzz config target, docs/fuzzing.md): Tomlyn's lexer threw
    // ArgumentOutOfRangeException out of ConfigLoader.Parse on a string cut inside an escape.
    [Fact]
    public void Parse_StringEndingInsideAnEscape_IsASyntaxErrorAtTheEndOfTheFile()
    {
        string error = Assert.Single(Errors("[host]\ngid = \"\\"));
        Assert.StartsWith("F:2:9: (toml): not valid TOML", error);
    }

    // Found by fuzzing: `"" = 1` (a legal empty TOML key) gave "F:1:1: : unknown key ''".
    [Fact]
    public void Parse_EmptyQuotedKey_ErrorNamesTheKeyQuoted()
    {
        Assert.Equal(["F:1:1: \"\": unknown key '' (known: device, host)"], Errors("\"\" = 1"));
    }

    [Fact]
    public void AnUnreadableFileIsReportedNotThrown()
    {
        ConfigLoader loader = ConfigLoader.Parse(_dir["missing.toml"]);
        Assert.Null(loader.BindDevices(_catalog));
        Assert.Contains("cannot read the config file", Assert.Single(loader.Errors.Errors).Message);
    }
}
