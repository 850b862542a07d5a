using System.Reflection;
using Microsoft.Extensions.Logging;
using Vism.Core.InMemory;
using Vism.Native;

namespace Vism.Events.Tests;

/// <summary>What the host sees of the two plugins: registration, options and their validation.</summary>
public sealed class PluginTests
{
    private static readonly DeviceDescription Device = DeviceLayout.Compute("ism0", Virtio.IsmDeviceId, 16 << 20, 1 << 20, 1);

    [Fact]
    public void EachPluginRegistersItsKindWithItsChannelAndOptionsAndCarriesTheContractVersion()
    {
        var vq = new RecordingBuilder();
        new VqEventsPlugin().Register(vq);
        Assert.Equal([("vq", typeof(VqEventChannel), typeof(VqEventOptions))], vq.Events);

        var irq = new RecordingBuilder();
        new IrqEventsPlugin().Register(irq);
        Assert.Equal([("irq", typeof(IrqEventChannel), typeof(IrqEventOptions))], irq.Events);

        foreach (Type t in new[] { typeof(VqEventsPlugin), typeof(IrqEventsPlugin) })
            Assert.Equal(VismContract.Version, t.Assembly.GetCustomAttribute<VismPluginAttribute>()?.ContractVersion);
    }

    [Fact]
    public void DefaultOptionsAreValidAndEveryOptionIsDescribed()
    {
        Assert.Empty(Validate(new VqEventOptions()));
        Assert.Empty(Validate(new IrqEventOptions()));
        Assert.Equal(TimeSpan.Zero, new VqEventOptions().BatchDelay);
        Assert.Equal(UnboundUpdates.Hold, new IrqEventOptions().Unbound);
        foreach (Type t in new[] { typeof(VqEventOptions), typeof(IrqEventOptions) })
            foreach (PropertyInfo p in t.GetProperties())
                Assert.False(string.IsNullOrWhiteSpace(p.GetCustomAttribute<System.ComponentModel.DescriptionAttribute>()?.Description), $"{t.Name}.{p.Name}");
    }

    [Theory]
    [InlineData(-1.0)]
    [InlineData(1001.0)]
    public void ABatchDelayThatIsNegativeOrOverASecondIsAnErrorOnItsKey(double milliseconds)
    {
        TimeSpan delay = TimeSpan.FromMilliseconds(milliseconds);
        Assert.Equal(["batch-delay"], Validate(new VqEventOptions { BatchDelay = delay }).Select(e => e.Key));
        Assert.Equal(["batch-delay"], Validate(new IrqEventOptions { BatchDelay = delay }).Select(e => e.Key));
        Assert.Empty(Validate(new VqEventOptions { BatchDelay = TimeSpan.FromSeconds(1) }));
    }

    [Fact]
    public void ASubMillisecondBatchDelayIsAccepted()
    {
        Assert.Empty(Validate(new VqEventOptions { BatchDelay = TimeSpan.FromMicroseconds(200) }));
        Assert.Empty(Validate(new IrqEventOptions { BatchDelay = TimeSpan.FromMicroseconds(1500) }));
    }

    [Fact]
    public void AnUnboundPolicyOutsideHoldAndDropIsAnErrorOnItsKey()
    {
        Assert.Equal(["unbound"], Validate(new IrqEventOptions { Unbound = (UnboundUpdates)7 }).Select(e => e.Key));
        Assert.Empty(Validate(new IrqEventOptions { Unbound = UnboundUpdates.Drop }));
    }

    private static List<(string Key, string Message)> Validate(IValidatableOptions options)
    {
        var context = new RecordingValidation();
        options.Validate(context);
        return context.Errors;
    }

    private sealed class RecordingValidation : OptionsValidationContext
    {
        public List<(string Key, string Message)> Errors { get; } = [];

        public override DeviceDescription Device => PluginTests.Device;

        public override HostDescription Host { get; } = new() { Gid = 1, StateDirectory = "/tmp", SocketDirectory = "/tmp" };

        public override void Error(string key, string message) => Errors.Add((key, message));

        public override void DeviceError(string key, string message) => Errors.Add(("device." + key, message));

        public override void ClaimEndpoint(string key, string endpoint) => Errors.Add((key, "claimed " + endpoint));
    }

    private sealed class RecordingBuilder : IVismPluginBuilder
    {
        public List<(string Kind, Type Channel, Type Options)> Events { get; } = [];

        public IVismPluginBuilder AddTransport<TTransport, TOptions>(string kind, string summary)
            where TTransport : class, ITransport where TOptions : class, new() => throw new InvalidOperationException("an event plugin registered a transport");

        public IVismPluginBuilder AddMemory<TBackend, TOptions>(string kind, string summary)
            where TBackend : class, IMemoryBackend where TOptions : class, new() => throw new InvalidOperationException("an event plugin registered a memory backend");

        public IVismPluginBuilder AddEvents<TChannel, TOptions>(string kind, string summary)
            where TChannel : class, IEventChannel where TOptions : class, new()
        {
            Assert.False(string.IsNullOrWhiteSpace(summary));
            Events.Add((kind, typeof(TChannel), typeof(TOptions)));
            return this;
        }
    }
}
