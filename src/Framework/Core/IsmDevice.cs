using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core.Registry;
using Vism.Core.Virtqueues;

namespace Vism.Core;

/// <summary>
/// One virtio-ism device: the virtio device model (features, status, config space, shared-memory
/// windows, virtqueues) and the ISM control queue on top of the host registry. Created by
/// <see cref="IsmHost.AddDevice"/>; served by a transport through <see cref="IVirtioDevice"/>.
/// Every member runs on the device's <see cref="Loop"/>; bad input is logged, counted in
/// <see cref="Counters"/> (<c>err.*</c>) and answered with ERR or DEVICE_NEEDS_RESET, never an exception.
/// </summary>
/// <remarks>
/// A transport must drop every mapping it made in the REGIONS window when it resets the device
/// (through <see cref="TrySetStatus"/> with 0, <see cref="Reset"/> or <see cref="Disconnect"/>), as
/// QEMU does for vhost-user: the device releases its references at reset and never unmaps then.
/// </remarks>
public sealed partial class IsmDevice : IVirtioDevice
{
    /// <summary>Largest queue size the device accepts.</summary>
    public const ushort DefaultMaxQueueSize = 256;

    private readonly IMemoryBackend _memory;
    private readonly IEventChannel? _events;
    private readonly ILogger _log;
    private readonly DeviceQueue[] _queues;
    private readonly SlotAllocator _slots;
    private readonly Dictionary<int, SlotEntry> _regions = new();
    private readonly Lock _usageLock = new();
    private MemoryUsage _usage;
    private ITransportServices? _services;
    private volatile byte _status;
    private ulong _driverFeatures;
    private readonly DeviceLimits _limits;
    private EventContext? _eventContext;

    internal IsmDevice(IsmHost host, ulong devId, DeviceDescription description, IDeviceLoop loop,
        IMemoryBackend memory, IEventChannel? events, IDeviceCounters counters, ILogger log, DeviceLimits? limits = null)
    {
        _limits = limits ?? DeviceLimits.Default;
        if (_limits.Validate() is { } badLimits)
            throw new ArgumentException(badLimits, nameof(limits));
        if (description.MaxRegions <= 0)
            throw new ArgumentException("the device has no region slots", nameof(description));
        if ((ulong)description.MaxRegions > description.RegionsWindowSize / description.RegionSize)
            throw new ArgumentException("MaxRegions slots do not fit in the REGIONS window", nameof(description));
        Host = host;
        DevId = devId;
        Description = description;
        Loop = loop;
        _memory = memory;
        _events = events;
        Counters = counters;
        _log = log;
        _slots = new SlotAllocator(description.MaxRegions);
        int eventQueues = events?.QueueCount ?? 0;
        if (eventQueues < 0 || eventQueues > 8)
            throw new ArgumentException($"the event channel asks for {eventQueues} queues", nameof(events));
        _queues = new DeviceQueue[1 + eventQueues];
        for (int i = 0; i < _queues.Length; i++)
            _queues[i] = new DeviceQueue(this, i);
        DeviceFeatures = Features.Mask(Features.Version1, Features.RingIndirectDesc, Features.RingEventIdx) | (events?.Features ?? 0);
        SharedMemory = [new SharedMemoryWindow(ShmId.Regions, description.RegionsWindowSize), new SharedMemoryWindow(ShmId.Notify, description.NotifyWindowSize)];
    }

    /// <summary>The host registry this device belongs to.</summary>
    public IsmHost Host { get; }

    /// <summary>The devid: unique in the host, never 0, unchanged by reset.</summary>
    public ulong DevId { get; }

    /// <summary>The device's counters.</summary>
    public IDeviceCounters Counters { get; }

    /// <inheritdoc />
    public DeviceDescription Description { get; }

    /// <inheritdoc />
    public IDeviceLoop Loop { get; }

    /// <inheritdoc />
    public uint DeviceId => Description.VirtioId;

    /// <inheritdoc />
    public ulong DeviceFeatures { get; }

    /// <inheritdoc />
    public ulong DriverFeatures => Volatile.Read(ref _driverFeatures);

    /// <inheritdoc />
    public DeviceStatus Status => (DeviceStatus)_status;

    /// <inheritdoc />
    public uint ConfigGeneration => 0; // the ISM config space never changes after creation

    /// <inheritdoc />
    public int ConfigSize => Virtio.IsmConfigSize;

    /// <inheritdoc />
    public IReadOnlyList<SharedMemoryWindow> SharedMemory { get; }

    /// <summary>Whether this device's memory backend persists regions (<see cref="IMemoryBackend.PersistsRegions"/>).</summary>
    internal bool PersistsRegions => _memory.PersistsRegions;

    /// <inheritdoc />
    public int QueueCount => _queues.Length;

    /// <inheritdoc />
    public ushort MaxQueueSize => DefaultMaxQueueSize;

    /// <inheritdoc />
    public int SlotsInUse => _slots.HighWater;

    /// <summary>Regions this device references now.</summary>
    public int RegionsInUse => _slots.InUse;

    /// <summary>Whether a transport connection is up.</summary>
    public bool IsConnected => Volatile.Read(ref _services) is not null;

    private bool Running => _services is not null && (_status & (byte)(DeviceStatus.DriverOk | DeviceStatus.DeviceNeedsReset)) == (byte)DeviceStatus.DriverOk;

    private bool EventFeatureNegotiated =>
        (_status & (byte)DeviceStatus.FeaturesOk) != 0 &&
        (DriverFeatures & Features.Mask(Features.IsmEventVq, Features.IsmEventIrq)) != 0;

    // ---- features and status ----

    /// <inheritdoc />
    public bool TrySetDriverFeatures(ulong features)
    {
        if ((_status & (byte)DeviceStatus.FeaturesOk) != 0)
        {
            Reject("features.after-features-ok", $"driver features 0x{features:x} written after FEATURES_OK");
            return false;
        }
        Volatile.Write(ref _driverFeatures, features);
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
        var current = (DeviceStatus)_status;
        DeviceStatus requested = (status & ~DeviceStatus.DeviceNeedsReset) | (current & DeviceStatus.DeviceNeedsReset);
        string? why = StatusTable.Check(current, requested);
        if (why is not null)
        {
            Reject("status.refused", why);
            return false;
        }
        if ((current & DeviceStatus.FeaturesOk) == 0 && (requested & DeviceStatus.FeaturesOk) != 0)
        {
            ulong driver = DriverFeatures;
            if ((driver & ~DeviceFeatures) != 0)
            {
                Reject("status.features-refused", $"the driver accepted features 0x{driver & ~DeviceFeatures:x} the device does not offer");
                return false;
            }
            if (!Features.Has(driver, Features.Version1))
            {
                Reject("status.features-refused", "the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)");
                return false;
            }
        }
        _status = (byte)requested;
        if ((current & DeviceStatus.DriverOk) == 0 && (requested & DeviceStatus.DriverOk) != 0)
            OnDriverOk();
        return true;
    }

    private void OnDriverOk()
    {
        ulong features = DriverFeatures;
        foreach (DeviceQueue q in _queues)
            q.Ring.SetFeatures(Features.Has(features, Features.RingEventIdx), Features.Has(features, Features.RingIndirectDesc));
        Counters.Increment("device.driver-ok");
        _log.LogInformation("device {Name} (devid {DevId}): driver ready, features 0x{Features:x}", Description.Name, DevId, features);
        ActivateEvents();
        KickControl();
    }

    /// <inheritdoc />
    public void Reset()
    {
        EndControlRun();
        DeactivateEvents();
        foreach (DeviceQueue q in _queues)
            q.Stop();
        foreach ((int slot, SlotEntry entry) in _regions)
            Host.Release(entry.Region, this, slot, detach: false);
        _regions.Clear();
        _slots.Clear();
        _permissionChanges.Clear();
        _deferredPermissionChanges.Clear();
        _status = 0;
        Volatile.Write(ref _driverFeatures, 0);
        Counters.Increment("device.reset");
        RefreshMemoryUsage();
    }

    /// <summary>Marks the device DEVICE_NEEDS_RESET after a fatal driver error (a corrupt ring),
    /// stops processing and signals a configuration change. Other devices are not affected.</summary>
    /// <param name="reason">Counter suffix, e.g. <c>ring.loop</c>.</param>
    /// <param name="detail">What happened, for the log.</param>
    internal void Fail(string reason, string detail)
    {
        Counters.Increment("err." + reason);
        if ((_status & (byte)DeviceStatus.DeviceNeedsReset) != 0)
            return;
        _status |= (byte)DeviceStatus.DeviceNeedsReset;
        EndControlRun();
        _log.LogError("device {Name} (devid {DevId}): DEVICE_NEEDS_RESET: {Reason}: {Detail}", Description.Name, DevId, reason, detail);
        try
        {
            _services?.SignalConfigChange();
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "device {Name}: the transport failed to signal a configuration change", Description.Name);
        }
    }

    /// <summary>Counts a refused request (an ERR ack, a refused status write, ...) as
    /// <c>err.</c> + its counter and logs it, rate limited by <see cref="RateLimitedLog"/>, so a
    /// driver repeating a bad request cannot flood the log while every reason still shows up in it.</summary>
    private void Reject(Refusal refusal)
    {
        string name = "err." + refusal.Counter;
        Counters.Increment(name);
        long times = Counters.Get(name);
        if (RateLimitedLog.ShouldLog(times))
            _log.LogWarning("device {Name} (devid {DevId}): {Reason}: {Detail} ({Times} so far)", Description.Name, DevId, refusal.Counter, refusal.Detail, times);
    }

    private void Reject(string reason, string detail) => Reject(new Refusal(reason, detail));

    // ---- config space ----

    /// <inheritdoc />
    public bool TryReadConfig(uint offset, Span<byte> destination)
    {
        int width = destination.Length;
        if (width is not (1 or 2 or 4 or 8))
        {
            Reject("config.bad-width", $"config read of {width} bytes at {offset}");
            return false;
        }
        if (offset > (uint)ConfigSize || (uint)width > (uint)ConfigSize - offset)
        {
            Reject("config.out-of-range", $"config read of {width} bytes at {offset} (config space is {ConfigSize} bytes)");
            return false;
        }
        Span<byte> config = stackalloc byte[Virtio.IsmConfigSize];
        BinaryPrimitives.WriteUInt64LittleEndian(config, Host.Gid);
        BinaryPrimitives.WriteUInt64LittleEndian(config[8..], DevId);
        BinaryPrimitives.WriteUInt64LittleEndian(config[16..], Description.RegionSize);
        BinaryPrimitives.WriteUInt64LittleEndian(config[24..], Description.NotifySize);
        config.Slice((int)offset, width).CopyTo(destination);
        return true;
    }

    /// <inheritdoc />
    public bool TryWriteConfig(uint offset, ReadOnlySpan<byte> source)
    {
        Reject("config.write", $"config write of {source.Length} bytes at {offset}: the ISM config space is read-only");
        return false;
    }

    // ---- queues ----

    /// <inheritdoc />
    public bool TryStartQueue(int index, in QueueSettings settings)
    {
        if ((uint)index >= (uint)_queues.Length)
        {
            Reject("queue.bad-index", $"start of queue {index}; the device has {_queues.Length}");
            return false;
        }
        ITransportServices? services = _services;
        if (services is null)
        {
            Reject("queue.not-connected", $"start of queue {index} with no driver connected");
            return false;
        }
        if ((_status & (byte)(DeviceStatus.DeviceNeedsReset | DeviceStatus.Failed)) != 0)
        {
            Reject("queue.needs-reset", $"start of queue {index} while the device needs a reset");
            return false;
        }
        string? why = SplitQueue.Validate(settings, MaxQueueSize, services.Memory);
        if (why is not null)
        {
            Reject("queue.bad-layout", $"queue {index}: {why}");
            return false;
        }
        DeviceQueue q = _queues[index];
        StopQueue(index); // a restarted queue starts afresh; a control request in flight is abandoned
        ulong features = DriverFeatures;
        q.Ring.Configure(settings, Features.Has(features, Features.RingEventIdx), Features.Has(features, Features.RingIndirectDesc));
        q.Started = true;
        if (index == Virtio.ControlQueue)
            KickControl();
        return true;
    }

    /// <inheritdoc />
    public ushort StopQueue(int index)
    {
        if ((uint)index >= (uint)_queues.Length)
            return 0;
        if (index == Virtio.ControlQueue)
        {
            // A request awaiting its mapping completes into nothing; a reset cleans up after it.
            EndControlRun();
        }
        return _queues[index].Stop();
    }

    /// <inheritdoc />
    public bool IsQueueStarted(int index) => (uint)index < (uint)_queues.Length && _queues[index].Started;

    /// <inheritdoc />
    public void NotifyQueue(int index)
    {
        if ((uint)index >= (uint)_queues.Length)
        {
            Reject("queue.bad-index", $"kick of queue {index}; the device has {_queues.Length}");
            return;
        }
        if (!Running)
        {
            Counters.Increment("queue.kick-ignored");
            return;
        }
        if (index == Virtio.ControlQueue)
            KickControl();
        else if (_eventContext is not null)
            CallEvents(e => e.OnQueueNotified(index), "OnQueueNotified");
        else
            Counters.Increment("queue.kick-without-events");
    }

    // ---- connection ----

    /// <inheritdoc />
    public void Connect(ITransportServices services)
    {
        ArgumentNullException.ThrowIfNull(services);
        if (_services is not null)
            Reset();
        Volatile.Write(ref _services, services);
        Counters.Increment("device.connect");
    }

    /// <inheritdoc />
    public void Disconnect()
    {
        if (_services is null)
            return;
        Reset();
        Volatile.Write(ref _services, null);
        Counters.Increment("device.disconnect");
        _log.LogInformation("device {Name} (devid {DevId}): driver disconnected; its attachments are released", Description.Name, DevId);
    }

    /// <summary>Called by <see cref="IsmHost.RemoveDevice"/> on the loop.</summary>
    internal void Shutdown()
    {
        Reset();
        Volatile.Write(ref _services, null);
    }

    // ---- memory accounting ----

    /// <summary>Returns <paramref name="block"/>'s memory and disposes it, on this device's loop
    /// (the block belongs to this device's backend). While the host shuts down the block is only
    /// disposed, so that persisted regions survive a graceful stop.</summary>
    internal void FreeBlock(IMemoryBlock block)
    {
        if (!Loop.IsOnLoop)
        {
            Loop.Post(() => FreeBlock(block));
            return;
        }
        ReleaseAndDispose(block, release: !Host.ShuttingDown, "regions.freed", refreshUsage: true);
    }

    /// <summary>Returns <paramref name="block"/>'s memory when <paramref name="release"/> (a failure is
    /// logged and counted, never thrown), disposes it and counts <paramref name="counter"/>.</summary>
    private void ReleaseAndDispose(IMemoryBlock block, bool release, string counter, bool refreshUsage)
    {
        try
        {
            if (release)
                block.Release();
        }
        catch (Exception ex)
        {
            Counters.Increment("err.memory.release-failed");
            _log.LogError(ex, "device {Name}: releasing a block's memory failed ({Counter})", Description.Name, counter);
        }
        block.Dispose();
        Counters.Increment(counter);
        if (refreshUsage)
            RefreshMemoryUsage();
    }

    /// <summary>Copies the backend's accounting (loop only) for <see cref="Snapshot"/>.</summary>
    internal void RefreshMemoryUsage()
    {
        MemoryUsage usage;
        try
        {
            usage = _memory.Usage;
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "device {Name}: the memory backend failed to report its usage", Description.Name);
            return;
        }
        lock (_usageLock)
            _usage = usage;
    }

    internal DeviceSnapshot Snapshot()
    {
        MemoryUsage usage;
        lock (_usageLock)
            usage = _usage;
        var status = (DeviceStatus)_status;
        IReadOnlyDictionary<string, long> counters = Counters is DeviceCounters dc ? dc.Snapshot() : new Dictionary<string, long>();
        return new DeviceSnapshot(Description.Name, DevId, status,
            (status & DeviceStatus.FeaturesOk) != 0 ? DriverFeatures : 0, IsConnected,
            _slots.InUse, Description.MaxRegions, usage, counters);
    }

    /// <summary>A region this device references, by slot.</summary>
    private sealed class SlotEntry(Region region, bool writable)
    {
        public Region Region { get; } = region;
        public bool Writable { get; set; } = writable;
        public bool Mapped;
    }
}
