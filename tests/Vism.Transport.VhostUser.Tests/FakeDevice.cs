using System.Buffers.Binary;
using System.Collections.Concurrent;
using Vism.Abstractions;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// A test double at the transport's seam: the virtio status machine (transitions checked the way the
/// spec orders them), a 32-byte ISM config space, shared-memory windows, and recording of everything
/// the transport calls. The ISM semantics live in Core; this double only needs to be strict enough
/// that a transport driving it wrongly fails.
/// </summary>
internal sealed class FakeDevice : IVirtioDevice
{
    private readonly byte[] _config = new byte[Virtio.IsmConfigSize];
    private readonly ushort[] _nextAvail;
    private readonly bool[] _started;
    private ulong _driverFeatures;

    public FakeDevice(IDeviceLoop loop, int queueCount = 1, ulong regionsWindow = 2 << 20, ulong notifyWindow = 2 << 20,
        ulong regionSize = 1 << 20, ulong notifySize = 8, string name = "dev0")
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
        _nextAvail = new ushort[queueCount];
        _started = new bool[queueCount];
        var windows = new List<SharedMemoryWindow>();
        if (regionsWindow > 0) windows.Add(new SharedMemoryWindow(ShmId.Regions, regionsWindow));
        if (notifyWindow > 0) windows.Add(new SharedMemoryWindow(ShmId.Notify, notifyWindow));
        SharedMemory = windows;
        BinaryPrimitives.WriteUInt64LittleEndian(_config, 0x1234_5678_9abc_def0);
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(8), 7);
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(16), regionSize);
        BinaryPrimitives.WriteUInt64LittleEndian(_config.AsSpan(24), notifySize);
    }

    public DeviceDescription Description { get; }
    public IDeviceLoop Loop { get; }
    public uint DeviceId => Virtio.IsmDeviceId;
    public ulong DeviceFeatures { get; init; } = Features.Mask(Features.Version1, Features.IsmEventIrq, Features.RingIndirectDesc);
    public ulong DriverFeatures => _driverFeatures;
    public DeviceStatus Status { get; private set; }
    public uint ConfigGeneration => 0;
    public int ConfigSize => _config.Length;
    public IReadOnlyList<SharedMemoryWindow> SharedMemory { get; }
    public int QueueCount { get; }
    public ushort MaxQueueSize => 256;
    public int SlotsInUse { get; set; }

    public ReadOnlySpan<byte> ConfigBytes => _config;

    /// <summary>Every status the device accepted, in order.</summary>
    public ConcurrentQueue<DeviceStatus> StatusHistory { get; } = new();
    public ConcurrentQueue<(int Index, QueueSettings Settings)> StartedQueues { get; } = new();
    public ConcurrentQueue<ulong> NotifyWrites { get; } = new();
    public int Kicks;
    public int Resets;
    public int Connects;
    public int Disconnects;

    /// <summary>When set, a kick on a queue is answered with a used-buffer signal on it.</summary>
    public bool EchoKicks { get; set; } = true;

    public ITransportServices? Services { get; private set; }

    public bool TrySetDriverFeatures(ulong features)
    {
        if (Status.HasFlag(DeviceStatus.FeaturesOk)) return false;
        _driverFeatures = features;
        return true;
    }

    public bool TrySetStatus(DeviceStatus status)
    {
        if (status == DeviceStatus.Reset)
        {
            Reset();
            return true;
        }
        if ((Status & ~status) != 0) return false; // clearing bits needs a reset
        if (status.HasFlag(DeviceStatus.Driver) && !status.HasFlag(DeviceStatus.Acknowledge)) return false;
        if (status.HasFlag(DeviceStatus.FeaturesOk) && !Status.HasFlag(DeviceStatus.FeaturesOk))
        {
            if (!status.HasFlag(DeviceStatus.Driver)) return false;
            if ((_driverFeatures & ~DeviceFeatures) != 0 || !Features.Has(_driverFeatures, Features.Version1)) return false;
        }
        if (status.HasFlag(DeviceStatus.DriverOk) && !status.HasFlag(DeviceStatus.FeaturesOk)) return false;
        Status = status;
        StatusHistory.Enqueue(status);
        return true;
    }

    public void Reset()
    {
        Resets++;
        Status = DeviceStatus.Reset;
        _driverFeatures = 0;
        Array.Clear(_started);
        Array.Clear(_nextAvail);
        SlotsInUse = 0;
    }

    public bool TryReadConfig(uint offset, Span<byte> destination)
    {
        if (destination.Length is not (1 or 2 or 4 or 8)) return false;
        if (offset > (uint)_config.Length || (uint)destination.Length > (uint)_config.Length - offset) return false;
        _config.AsSpan((int)offset, destination.Length).CopyTo(destination);
        return true;
    }

    public bool TryWriteConfig(uint offset, ReadOnlySpan<byte> source) => false;

    public bool TryStartQueue(int index, in QueueSettings settings)
    {
        if ((uint)index >= (uint)QueueCount || !Status.HasFlag(DeviceStatus.FeaturesOk)) return false;
        if (settings.Size == 0 || !ushort.IsPow2(settings.Size) || settings.Size > MaxQueueSize) return false;
        IGuestMemory? memory = Services?.Memory;
        if (memory is null
            || !memory.TryTranslate(settings.DescriptorTable, 16UL * settings.Size, out _)
            || !memory.TryTranslate(settings.AvailRing, 6 + 2UL * settings.Size, out _)
            || !memory.TryTranslate(settings.UsedRing, 6 + 8UL * settings.Size, out _))
            return false;
        _started[index] = true;
        _nextAvail[index] = settings.NextAvail;
        StartedQueues.Enqueue((index, settings));
        return true;
    }

    public ushort StopQueue(int index)
    {
        if ((uint)index >= (uint)QueueCount) return 0;
        _started[index] = false;
        return _nextAvail[index];
    }

    public bool IsQueueStarted(int index) => (uint)index < (uint)QueueCount && _started[index];

    public void NotifyQueue(int index)
    {
        Interlocked.Increment(ref Kicks);
        if ((uint)index < (uint)QueueCount) _nextAvail[index]++;
        if (EchoKicks) Services?.SignalQueue(index);
    }

    public void NotifyWrite(ulong offset) => NotifyWrites.Enqueue(offset);

    public void Connect(ITransportServices services)
    {
        Connects++;
        Services = services;
    }

    public void Disconnect()
    {
        Disconnects++;
        Reset();
        Services = null;
    }
}
