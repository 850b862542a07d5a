using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Vism.Abstractions;

namespace Vism.Transport.Mmio.Tests;

/// <summary>
/// A small test double of the device model at the <see cref="IVirtioDevice"/> seam: the virtio
/// status rules, a 32-byte ISM config space, two shared-memory windows and queues with the checks
/// the real device makes. It records what the transport asked of it.
/// </summary>
internal sealed class FakeVirtioDevice : IVirtioDevice
{
    public const ulong RegionsLength = 1 << 20;
    public const ulong NotifyLength = 4096;
    private static readonly ulong Offered = Features.Mask(Features.Version1, Features.RingReset, Features.IsmEventIrq);

    private readonly byte[] _config = new byte[Virtio.IsmConfigSize];
    private readonly bool[] _started;

    public FakeVirtioDevice(IDeviceLoop loop, int queueCount = 2, ushort maxQueueSize = 256)
    {
        Loop = loop;
        QueueCount = queueCount;
        MaxQueueSize = maxQueueSize;
        _started = new bool[queueCount];
        BinaryPrimitives.WriteUInt64LittleEndian(_config, 0x1122334455667788);       // gid
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(8), 7);              // devid
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(16), 64 * 1024);     // region_size
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(24), 1);             // notify_size
        Description = new DeviceDescription
        {
            Name = "fake0", RegionSize = 64 * 1024, NotifySize = 1, MaxRegions = 16,
            RegionsWindowSize = RegionsLength, NotifyWindowSize = NotifyLength,
        };
    }

    public DeviceDescription Description { get; }
    public IDeviceLoop Loop { get; }
    public uint DeviceId => Virtio.IsmDeviceId;
    public ulong DeviceFeatures => Offered;
    public ulong DriverFeatures { get; private set; }
    public DeviceStatus Status { get; private set; }
    public uint ConfigGeneration { get; set; } = 3;
    public int ConfigSize => _config.Length;
    public IReadOnlyList<SharedMemoryWindow> SharedMemory { get; } =
        [new(ShmId.Regions, RegionsLength), new(ShmId.Notify, NotifyLength)];
    public int QueueCount { get; }
    public ushort MaxQueueSize { get; }
    public int SlotsInUse => 0;

    public bool RefuseQueues { get; set; }
    public ITransportServices? Services { get; private set; }
    public int ResetCount { get; private set; }
    public int ConnectCount { get; private set; }
    public int DisconnectCount { get; private set; }
    public ConcurrentQueue<(int Index, QueueSettings Settings)> StartedQueues { get; } = new();
    public ConcurrentQueue<int> StoppedQueues { get; } = new();
    public ConcurrentQueue<int> Kicks { get; } = new();
    public ConcurrentQueue<ulong> NotifyWrites { get; } = new();

    /// <summary>Called on each kick (on the loop), so a test can make the device act like one that answers.</summary>
    public Action<int>? OnKick { get; set; }

    /// <summary>Called on Reset (on the loop), before the status is cleared.</summary>
    public Action? OnReset { get; set; }

    public bool TrySetDriverFeatures(ulong features)
    {
        if (Status.HasFlag(DeviceStatus.FeaturesOk)) return false;
        DriverFeatures = features;
        return true;
    }

    public bool TrySetStatus(DeviceStatus status)
    {
        if (status == DeviceStatus.Reset)
        {
            Reset();
            return true;
        }
        if (status.HasFlag(DeviceStatus.Failed))
        {
            Status |= DeviceStatus.Failed;
            return true;
        }
        if ((Status & ~status) != 0) return false; // the driver never clears a bit
        DeviceStatus added = status & ~Status;
        bool ok = added switch
        {
            DeviceStatus.Acknowledge => Status == DeviceStatus.Reset,
            DeviceStatus.Driver => Status == DeviceStatus.Acknowledge,
            DeviceStatus.FeaturesOk => Status == (DeviceStatus.Acknowledge | DeviceStatus.Driver)
                && (DriverFeatures & ~Offered) == 0 && Features.Has(DriverFeatures, Features.Version1),
            DeviceStatus.DriverOk => Status == (DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk),
            DeviceStatus.Reset => true,
            _ => false,
        };
        if (ok) Status = status;
        return ok;
    }

    public void Reset()
    {
        OnReset?.Invoke();
        ResetCount++;
        Status = DeviceStatus.Reset;
        DriverFeatures = 0;
        Array.Clear(_started);
    }

    public bool TryReadConfig(uint offset, Span<byte> destination)
    {
        if (destination.Length is not (1 or 2 or 4 or 8) || offset > (uint)_config.Length || destination.Length > _config.Length - offset)
            return false;
        _config.AsSpan((int)offset, destination.Length).CopyTo(destination);
        return true;
    }

    public bool TryWriteConfig(uint offset, ReadOnlySpan<byte> source) => false;

    public bool TryStartQueue(int index, in QueueSettings settings)
    {
        if (RefuseQueues || (uint)index >= (uint)QueueCount) return false;
        if (settings.Size == 0 || settings.Size > MaxQueueSize || !ulong.IsPow2(settings.Size)) return false;
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
        StartedQueues.Enqueue((index, settings));
        return true;
    }

    public ushort StopQueue(int index)
    {
        if ((uint)index < (uint)QueueCount) _started[index] = false;
        StoppedQueues.Enqueue(index);
        return 0;
    }

    public bool IsQueueStarted(int index) => (uint)index < (uint)QueueCount && _started[index];

    public void NotifyQueue(int index)
    {
        Kicks.Enqueue(index);
        OnKick?.Invoke(index);
    }

    public void NotifyWrite(ulong offset) => NotifyWrites.Enqueue(offset);

    public void Connect(ITransportServices services)
    {
        ConnectCount++;
        Services = services;
    }

    public void Disconnect()
    {
        DisconnectCount++;
        Services = null;
        Reset();
    }
}

/// <summary>Counters for tests.</summary>
internal sealed class TestCounters : IDeviceCounters
{
    private readonly ConcurrentDictionary<string, long> _values = new();

    public void Increment(string name, long by = 1) => _values.AddOrUpdate(name, by, (_, v) => v + by);

    public long Get(string name) => _values.TryGetValue(name, out long v) ? v : 0;
}

/// <summary>A loop for pure state-machine tests: everything runs inline on the calling thread.</summary>
internal sealed class InlineLoop : IDeviceLoop
{
    public bool IsOnLoop => true;

    public void Post(Action work) => work();

    public IDisposable WatchReadable(SafeHandle fd, Action onReadable) => throw new NotSupportedException();

    public IDisposable Schedule(TimeSpan due, Action callback) => throw new NotSupportedException();
}
