using Microsoft.Win32.SafeHandles;
using Vism.Driver;
using Vism.Native;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Conformance.Tests;

/// <summary>
/// Plugins written for these tests, as a third party would write them: a working transport that
/// brings its own driver connector (<c>echo</c>), the same transport registered under a kind no
/// connector drives (<c>no-connector</c>), and two deliberately broken plugins the suite must catch:
/// memory that hands out regions full of old bytes and ignores its capacity (<c>dirty</c>), and an
/// event channel that offers EVENT_VQ but never delivers anything (<c>mute</c>).
/// </summary>
public sealed class TestPlugins : IVismPlugin
{
    public void Register(IVismPluginBuilder builder) => builder
        .AddTransport<EchoTransport, EchoOptions>("echo", "in-process transport with its own driver connector")
        .AddTransport<EchoTransport, NoConnectorOptions>("no-connector", "a transport nothing can drive")
        .AddMemory<DirtyMemory, DirtyMemoryOptions>("dirty", "regions that are never cleared, capacity ignored")
        .AddEvents<MuteEvents, MuteEventsOptions>("mute", "offers EVENT_VQ, delivers nothing");
}

public sealed class EchoOptions;

public sealed class NoConnectorOptions;

/// <summary>Serves nothing itself: its connector attaches an in-memory driver to the device.</summary>
public sealed class EchoTransport : ITransport
{
    public string Endpoint => "echo";

    public int VectorCount => 2;

    public void Start(IVirtioDevice device)
    {
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>The third-party connector the composer must find in this assembly.</summary>
public sealed class EchoConnector : IDriverConnector
{
    public string TransportKind => "echo";

    public IDriverTransport Connect(DriverTarget target) =>
        InMemoryTransport.StartFor(target.Device ?? throw new DriverTransportException("no device"), vectorCount: target.VectorCount);
}

public sealed class DirtyMemoryOptions
{
    public ulong Capacity { get; set; }
}

public sealed class DirtyMemory(DirtyMemoryOptions options, DeviceDescription device) : IMemoryBackend
{
    private ulong _used;

    public ulong PageSize => 4096;

    public MemoryUsage Usage => new(options.Capacity == 0 ? device.RegionsWindowSize : options.Capacity, _used, _used);

    public IMemoryBlock? TryAllocate(ulong length, ulong token, out string? failure)
    {
        failure = null;
        SafeFileHandle handle = MemFd.Create("dirty", length);
        using (Mapping map = Mapping.Map(handle, 0, length))
            map.AsSpan().Fill(0xee);
        _used += length;
        return new Block(handle, length, this);
    }

    public IReadOnlyList<RecoveredBlock> Recover() => [];

    public void Dispose()
    {
    }

    private sealed class Block(SafeFileHandle handle, ulong length, DirtyMemory owner) : IMemoryBlock
    {
        public SafeFileHandle Handle => handle;

        public ulong Offset => 0;

        public ulong Length => length;

        public void Release() => owner._used -= length;

        public void Dispose() => handle.Dispose();
    }
}

public sealed class MuteEventsOptions;

public sealed class MuteEvents : IEventChannel
{
    public ulong Features => Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.IsmEventVq);

    public int QueueCount => 1;

    public void Activate(IEventContext context)
    {
    }

    public void Deactivate()
    {
    }

    public void OnRegionUpdated(ulong offset)
    {
    }

    public void OnRegionDetached(ulong offset)
    {
    }

    public bool TryBindVector(ulong offset, ulong vector, out string? failure)
    {
        failure = "no vectors";
        return false;
    }

    public void OnQueueNotified(int queueIndex)
    {
    }

    public void Dispose()
    {
    }
}
