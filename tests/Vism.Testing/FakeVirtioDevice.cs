using System.Buffers.Binary;
using System.Collections.Concurrent;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;

namespace Vism.Testing;

/// <summary>
/// A test double of the ISM device at the <see cref="IVirtioDevice"/> seam, for transport tests. It
/// follows the real device's status rules (<see cref="StatusTable"/>) and offers exactly what the real
/// device offers with an IRQ event channel (<see cref="IsmDeviceFeatures"/>, read from a real
/// <see cref="IsmDevice"/>); it has a 32-byte ISM config space, the two shared-memory windows and
/// queues whose layout is checked, and records everything the transport asks of it. The ISM semantics
/// live in Core; this double only needs to be strict enough that a transport driving it wrongly fails.
/// Unlike the real device it starts a queue with no transport connected (register-level tests have
/// none), then checking only the layout's size and alignment.
/// Not thread-safe beyond its recording queues: use it on its loop, like the real device.
/// </summary>
public sealed class FakeVirtioDevice : IVirtioDevice
{
    /// <summary>The gid in the config space.</summary>
    public const ulong DefaultGid = 0x1122_3344_5566_7788;

    /// <summary>The devid in the config space.</summary>
    public const ulong DefaultDevId = 7;

    private static readonly Lazy<ulong> RealFeatures = new(() => ReadIsmDeviceFeatures(Features.Mask(Features.IsmEventIrq)));

    private readonly byte[] _config = new byte[Virtio.IsmConfigSize];
    private readonly ushort[] _nextAvail;
    private readonly bool[] _started;

    /// <summary>A device with <paramref name="queueCount"/> queues and the given windows; the REGIONS
    /// window holds <c>regionsWindow / regionSize</c> slots (0 for a window leaves it out).</summary>
    public FakeVirtioDevice(IDeviceLoop loop, int queueCount = 1, ulong regionsWindow = 2 << 20, ulong notifyWindow = 2 << 20,
        ulong regionSize = 1 << 20, ulong notifySize = 8, string name = "dev0", ushort maxQueueSize = 256)
    {
        Loop = loop;
        Description = new DeviceDescription
        {
            Name = name,
            RegionSize = regionSize,
            NotifySize = notifySize,
            MaxRegions = (int)(regionsWindow / regionSize),
            RegionsWindowSize = regionsWindow,
            NotifyWindowSize = notifyWindow,
        };
        QueueCount = queueCount;
        MaxQueueSize = maxQueueSize;
        _nextAvail = new ushort[queueCount];
        _started = new bool[queueCount];
        var windows = new List<SharedMemoryWindow>();
        if (regionsWindow > 0) windows.Add(new SharedMemoryWindow(ShmId.Regions, regionsWindow));
        if (notifyWindow > 0) windows.Add(new SharedMemoryWindow(ShmId.Notify, notifyWindow));
        SharedMemory = windows;
        BinaryPrimitives.WriteUInt64LittleEndian(_config, DefaultGid);
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(8), DefaultDevId);
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(16), regionSize);
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(24), notifySize);
    }

    /// <summary>What the real ISM device offers with an IRQ event channel: read once from a real
    /// <see cref="IsmDevice"/>, so this double never offers a feature the device does not.</summary>
    public static ulong IsmDeviceFeatures => RealFeatures.Value;

    /// <inheritdoc />
    public DeviceDescription Description { get; }

    /// <inheritdoc />
    public IDeviceLoop Loop { get; }

    /// <inheritdoc />
    public uint DeviceId => Virtio.IsmDeviceId;

    /// <summary>The offered features: <see cref="IsmDeviceFeatures"/> unless a test offers others
    /// (for a transport feature the ISM device does not use, such as VIRTIO_F_RING_RESET).</summary>
    public ulong DeviceFeatures { get; set; } = IsmDeviceFeatures;

    /// <inheritdoc />
    public ulong DriverFeatures { get; private set; }

    /// <inheritdoc />
    public DeviceStatus Status { get; private set; }

    /// <inheritdoc />
    public uint ConfigGeneration { get; set; }

    /// <inheritdoc />
    public int ConfigSize => _config.Length;

    /// <summary>The config space as the driver reads it.</summary>
    public ReadOnlySpan<byte> ConfigBytes => _config;

    /// <inheritdoc />
    public IReadOnlyList<SharedMemoryWindow> SharedMemory { get; }

    /// <inheritdoc />
    public int QueueCount { get; }

    /// <inheritdoc />
    public ushort MaxQueueSize { get; }

    /// <inheritdoc />
    public int SlotsInUse { get; set; }

    /// <summary>The services of the connected transport, null when none is.</summary>
    public ITransportServices? Services { get; private set; }

    /// <summary>Every status the device accepted (other than a reset), in order.</summary>
    public ConcurrentQueue<DeviceStatus> StatusHistory { get; } = new();

    /// <summary>Every queue start the device accepted.</summary>
    public ConcurrentQueue<(int Index, QueueSettings Settings)> StartedQueues { get; } = new();

    /// <summary>Every queue stop asked for, valid index or not.</summary>
    public ConcurrentQueue<int> StoppedQueues { get; } = new();

    /// <summary>The queue of every kick, in order.</summary>
    public ConcurrentQueue<int> Kicks { get; } = new();

    /// <summary>The offset of every NOTIFY-window write, in order.</summary>
    public ConcurrentQueue<ulong> NotifyWrites { get; } = new();

    /// <summary>Resets, including those of a disconnect.</summary>
    public int ResetCount { get; private set; }

    /// <summary>Transports connected.</summary>
    public int ConnectCount { get; private set; }

    /// <summary>Transports disconnected.</summary>
    public int DisconnectCount { get; private set; }

    /// <summary>Called on each kick (on the loop), so a test can make the device act like one that
    /// answers, e.g. with <see cref="SignalUsed"/>.</summary>
    public Action<int>? OnKick { get; set; }

    /// <summary>Signals a used buffer on queue <paramref name="index"/> through the connected transport, if any.</summary>
    public void SignalUsed(int index) => Services?.SignalQueue(index);

    /// <inheritdoc />
    public bool TrySetDriverFeatures(ulong features)
    {
        if (Status.HasFlag(DeviceStatus.FeaturesOk)) return false;
        DriverFeatures = features;
        return true;
    }

    /// <inheritdoc />
    public bool TrySetStatus(DeviceStatus status)
    {
        if (status == DeviceStatus.Reset)
        {
            Reset();
            return true;
        }
        DeviceStatus requested = (status & ~DeviceStatus.DeviceNeedsReset) | (Status & DeviceStatus.DeviceNeedsReset);
        if (StatusTable.Check(Status, requested) is not null) return false;
        if (!Status.HasFlag(DeviceStatus.FeaturesOk) && requested.HasFlag(DeviceStatus.FeaturesOk)
            && ((DriverFeatures & ~DeviceFeatures) != 0 || !Features.Has(DriverFeatures, Features.Version1)))
            return false;
        Status = requested;
        StatusHistory.Enqueue(requested);
        return true;
    }

    /// <inheritdoc />
    public void Reset()
    {
        ResetCount++;
        Status = DeviceStatus.Reset;
        DriverFeatures = 0;
        Array.Clear(_started);
        Array.Clear(_nextAvail);
        SlotsInUse = 0;
    }

    /// <inheritdoc />
    public bool TryReadConfig(uint offset, Span<byte> destination)
    {
        if (destination.Length is not (1 or 2 or 4 or 8)) return false;
        if (offset > (uint)_config.Length || (uint)destination.Length > (uint)_config.Length - offset) return false;
        _config.AsSpan((int)offset, destination.Length).CopyTo(destination);
        return true;
    }

    /// <inheritdoc />
    public bool TryWriteConfig(uint offset, ReadOnlySpan<byte> source) => false;

    /// <inheritdoc />
    public bool TryStartQueue(int index, in QueueSettings settings)
    {
        if ((uint)index >= (uint)QueueCount || (Status & (DeviceStatus.Failed | DeviceStatus.DeviceNeedsReset)) != 0) return false;
        if (settings.Size == 0 || settings.Size > MaxQueueSize || !ushort.IsPow2(settings.Size)) return false;
        if (settings.DescriptorTable % 16 != 0 || settings.AvailRing % 2 != 0 || settings.UsedRing % 4 != 0) return false;
        if (Services is { } s)
        {
            ulong n = settings.Size;
            if (!s.Memory.TryTranslate(settings.DescriptorTable, 16 * n, out _)
                || !s.Memory.TryTranslate(settings.AvailRing, 6 + 2 * n, out _)
                || !s.Memory.TryTranslate(settings.UsedRing, 6 + 8 * n, out _))
                return false;
        }
        _started[index] = true;
        _nextAvail[index] = settings.NextAvail;
        StartedQueues.Enqueue((index, settings));
        return true;
    }

    /// <inheritdoc />
    public ushort StopQueue(int index)
    {
        StoppedQueues.Enqueue(index);
        if ((uint)index >= (uint)QueueCount) return 0;
        _started[index] = false;
        return _nextAvail[index];
    }

    /// <inheritdoc />
    public bool IsQueueStarted(int index) => (uint)index < (uint)QueueCount && _started[index];

    /// <summary>Records the kick, takes one available buffer (what <see cref="StopQueue"/> then
    /// reports) and calls <see cref="OnKick"/>.</summary>
    public void NotifyQueue(int index)
    {
        Kicks.Enqueue(index);
        if ((uint)index < (uint)QueueCount) _nextAvail[index]++;
        OnKick?.Invoke(index);
    }

    /// <inheritdoc />
    public void NotifyWrite(ulong offset)
    {
        NotifyWrites.Enqueue(offset);
        OnNotifyWrite?.Invoke(offset);
    }

    /// <summary>Called on each NOTIFY-window write (on the loop), after it is recorded, so a test can
    /// make the device act on it (say, end a device as a failing event plugin would).</summary>
    public Action<ulong>? OnNotifyWrite { get; set; }

    /// <inheritdoc />
    public void Connect(ITransportServices services)
    {
        ConnectCount++;
        Services = services;
    }

    /// <inheritdoc />
    public void Disconnect()
    {
        DisconnectCount++;
        Reset();
        Services = null;
    }

    /// <summary>The features a real <see cref="IsmDevice"/> offers with an event channel offering
    /// <paramref name="eventFeatures"/> (the device adds its channel's bits to its own).</summary>
    private static ulong ReadIsmDeviceFeatures(ulong eventFeatures)
    {
        using var host = new IsmHost(new IsmHostOptions { Gid = DefaultGid }, NullLoggerFactory.Instance);
        using var memory = new InMemoryBackend(1 << 20);
        using var events = new OfferOnlyEventChannel(eventFeatures);
        DeviceDescription description = DeviceLayout.Compute("features", Virtio.IsmDeviceId, 16 << 20, 1 << 20, 1);
        IsmDevice device = host.AddDevice(description, new InlineLoop(), memory, events, new DeviceCounters());
        ulong features = device.DeviceFeatures;
        host.RemoveDevice(device);
        return features;
    }

    /// <summary>An event channel that only offers feature bits (it is never activated).</summary>
    private sealed class OfferOnlyEventChannel(ulong features) : IEventChannel
    {
        public ulong Features => features;
        public void Activate(IEventContext context) { }
        public void Deactivate() { }
        public void OnRegionUpdated(ulong offset) { }
        public void Dispose() { }
    }
}
