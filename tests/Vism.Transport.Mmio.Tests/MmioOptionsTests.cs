using System.Diagnostics.CodeAnalysis;
using Vism.Abstractions;

namespace Vism.Transport.Mmio.Tests;

/// <summary>The plugin's registration and its options' validation, as the host uses them.</summary>
public sealed class MmioOptionsTests
{
    private static readonly DeviceDescription Device = new()
    {
        Name = "ism0", RegionSize = 1 << 20, NotifySize = 1, MaxRegions = 15,
        RegionsWindowSize = 15 << 20, NotifyWindowSize = 1 << 20,
    };

    private static readonly HostDescription Host = new() { Gid = 1, StateDirectory = "/var/lib/vism", SocketDirectory = "/run/vism" };

    private sealed class Context : OptionsValidationContext
    {
        public List<(string Key, string Message)> Errors { get; } = [];
        public List<string> Endpoints { get; } = [];
        public override DeviceDescription Device => MmioOptionsTests.Device;
        public override HostDescription Host => MmioOptionsTests.Host;
        public override void Error(string key, string message) => Errors.Add((key, message));
        public override void DeviceError(string key, string message) => Errors.Add((key, message));
        public override void ClaimEndpoint(string key, string endpoint) => Endpoints.Add(endpoint);
    }

    private static Context Validate(MmioOptions options)
    {
        var context = new Context();
        options.Validate(context);
        return context;
    }

    [Fact]
    public void DefaultsAreValidAndClaimTheDeviceSocketUnderTheSocketDirectory()
    {
        Context c = Validate(new MmioOptions());
        Assert.Empty(c.Errors);
        Assert.Equal(["/run/vism/ism0.mmio.sock"], c.Endpoints);
        Assert.Equal(8, new MmioOptions().Vectors);
        Assert.Equal(5000, new MmioOptions().MapTimeoutMs);
    }

    [Fact]
    public void ARelativeSocketPathIsTakenUnderTheSocketDirectory()
    {
        Assert.Equal("/run/vism/vm1/ism.sock", new MmioOptions { SocketPath = "vm1/ism.sock" }.ResolveSocketPath(Host, Device));
        Assert.Equal("/tmp/x.sock", new MmioOptions { SocketPath = "/tmp/x.sock" }.ResolveSocketPath(Host, Device));
    }

    [Theory]
    [InlineData("vectors", -1, 5000)]
    [InlineData("vectors", 257, 5000)]
    [InlineData("map-timeout-ms", 8, 0)]
    [InlineData("map-timeout-ms", 8, 600_001)]
    public void OutOfRangeNumbersAreReportedOnTheirKey(string key, int vectors, int timeout)
    {
        Context c = Validate(new MmioOptions { Vectors = vectors, MapTimeoutMs = timeout });
        Assert.Equal(key, Assert.Single(c.Errors).Key);
    }

    [Fact]
    public void ASocketPathTooLongForAUnixSocketIsReported()
    {
        Context c = Validate(new MmioOptions { SocketPath = "/tmp/" + new string('s', 120) });
        Assert.Equal("socket-path", Assert.Single(c.Errors).Key);
        Assert.Empty(c.Endpoints);
    }

    [Fact]
    public void ThePluginRegistersTheMmioKindAndCarriesTheContractVersion()
    {
        var builder = new RecordingBuilder();
        new MmioPlugin().Register(builder);
        Assert.Equal([("mmio", typeof(MmioTransport), typeof(MmioOptions))], builder.Transports);
        var attribute = (VismPluginAttribute?)Attribute.GetCustomAttribute(typeof(MmioPlugin).Assembly, typeof(VismPluginAttribute));
        Assert.Equal(VismContract.Version, attribute?.ContractVersion);
    }

    private sealed class RecordingBuilder : IVismPluginBuilder
    {
        public List<(string, Type, Type)> Transports { get; } = [];

        public IVismPluginBuilder AddTransport<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TTransport,
            [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
            where TTransport : class, ITransport where TOptions : class, new()
        {
            Transports.Add((kind, typeof(TTransport), typeof(TOptions)));
            return this;
        }

        public IVismPluginBuilder AddMemory<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TBackend,
            [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
            where TBackend : class, IMemoryBackend where TOptions : class, new() => throw new InvalidOperationException("not a memory plugin");

        public IVismPluginBuilder AddEvents<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.PublicConstructors)] TChannel,
            [DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TOptions>(string kind, string summary)
            where TChannel : class, IEventChannel where TOptions : class, new() => throw new InvalidOperationException("not an events plugin");
    }
}
