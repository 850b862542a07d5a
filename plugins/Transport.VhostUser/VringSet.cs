using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser;

/// <summary>What <see cref="VringSet"/> needs from the connection that owns it.</summary>
internal interface IVringOwner
{
    /// <summary>The connection is closed.</summary>
    bool IsClosed { get; }

    /// <summary>The device runs with its shared memory set up (<see cref="OnRunning"/> happened).</summary>
    bool IsStarted { get; }

    /// <summary>The device is about to be reset: stop using it and forget its mappings.</summary>
    void OnStopping();

    /// <summary>The controlq and every started ring run with DRIVER_OK: the device runs.</summary>
    void OnRunning();

    /// <summary>A kick is about to reach the device.</summary>
    void OnKick();
}

/// <summary>
/// The rings of one connection and what vhost-user leaves to the backend to infer from them
/// (rust-vmm keeps the same apart from its request handler): when a ring starts on the device, when
/// the device as a whole starts (QEMU 11.1.3 never says DRIVER_OK for vhost-user-test-device), how
/// the device status advances one bit at a time, and when a stop was really a guest reset
/// (QEMU 11.1.3 says nothing else). Everything runs on the device's loop.
/// </summary>
internal sealed class VringSet : IDisposable
{
    /// <summary>VHOST_USER_F_PROTOCOL_FEATURES in the feature word.</summary>
    public const ulong ProtocolFeaturesMask = 1UL << VhostUserConstants.ProtocolFeaturesBit;

    private readonly Vring[] _rings;
    private readonly IVirtioDevice _device;
    private readonly IGuestMemory _memory;
    private readonly IVringOwner _owner;
    private readonly ILogger _log;
    private readonly IDeviceCounters _counters;
    private StoppedControl? _stoppedControl;

    public VringSet(int count, IVirtioDevice device, IGuestMemory memory, IVringOwner owner, ILogger log, IDeviceCounters counters)
    {
        _device = device;
        _memory = memory;
        _owner = owner;
        _log = log;
        _counters = counters;
        _rings = new Vring[count];
        for (int i = 0; i < _rings.Length; i++) _rings[i] = new Vring();
    }

    /// <summary>The features of the last SET_FEATURES (device bits and the protocol-features bit),
    /// or null when the device forgot them (reset).</summary>
    public ulong? Features { get; set; }

    public int Count => _rings.Length;

    public Vring this[int index] => _rings[index];

    /// <summary>The ring <paramref name="index"/>, or why there is none.</summary>
    public string? Find(uint index, out Vring? ring)
    {
        ring = index < (uint)_rings.Length ? _rings[index] : null;
        return ring is null ? $"queue {index} does not exist ({_rings.Length} queues)" : null;
    }

    /// <summary>Without VHOST_USER_F_PROTOCOL_FEATURES every ring is enabled at once; those that
    /// have everything start. Returns the refusals (the request itself succeeds).</summary>
    public List<string> EnableAll()
    {
        var errors = new List<string>();
        foreach (Vring ring in _rings) ring.Enabled = true;
        for (int i = 0; i < _rings.Length; i++)
            if (TryRun(i) is { } e) errors.Add(e);
        return errors;
    }

    /// <summary>An explicit device reset (SET_STATUS 0, RESET_DEVICE, RESET_OWNER): every ring
    /// stops and forgets its base; the device forgets its features.</summary>
    public void ResetAll()
    {
        bool protocolFeatures = Features is not { } f || (f & ProtocolFeaturesMask) != 0;
        foreach (Vring ring in _rings) ring.Reset(enabled: !protocolFeatures);
        Features = null; // the device forgot them; the frontend sends SET_FEATURES before the next start
        _stoppedControl = null;
    }

    /// <summary>
    /// QEMU 11.1.3 sends neither SET_STATUS 0 nor RESET_DEVICE when the guest resets the device (its
    /// "last queue pair" check skips both): the backend only sees SET_VRING_ENABLE 0 and
    /// GET_VRING_BASE, exactly as for a VM pause. A resumed device restarts its controlq where it
    /// stopped; a re-initialised one comes back with other features or a controlq at another base or
    /// address. Then the device is reset here (its regions released; QEMU dropped their mappings),
    /// keeping the features and rings of the new start.
    /// </summary>
    public void ResetForNewDriver(string why)
    {
        _log.LogInformation("{Device}: the driver re-initialised the device ({Why}): resetting it", _device.Description.Name, why);
        _counters.Increment("vhost-user.implicit-resets");
        _owner.OnStopping();
        _stoppedControl = null;
        foreach (Vring ring in _rings) ring.Running = false;
        ulong? features = Features;
        _device.Reset();
        if (features is { } f && !_device.TrySetDriverFeatures(f & ~ProtocolFeaturesMask))
            _log.LogWarning("{Device}: the device refused features 0x{Features:x} after the reset", _device.Description.Name, f);
    }

    /// <summary>Stops a running ring (SET_VRING_ENABLE 0, GET_VRING_BASE) and remembers where the
    /// controlq stopped, to tell a resume from a re-initialisation.</summary>
    public void Stop(int index)
    {
        Vring ring = _rings[index];
        if (!ring.Running) return;
        ring.Base = _device.StopQueue(index);
        ring.Running = false;
        if (index == Virtio.ControlQueue && ring.Layout is { } layout)
            _stoppedControl = new StoppedControl(layout, ring.Size, ring.Base);
    }

    /// <summary>The kick fd of ring <paramref name="index"/> became readable.</summary>
    public void OnKick(int index)
    {
        Vring ring = _rings[index];
        if (ring.Kick is null) return;
        ring.Kick.Drain();
        if (!ring.Running || !_device.Status.HasFlag(DeviceStatus.DriverOk))
        {
            // The ring is "started but disabled" (vhost-user, Ring states): its kick fd arrived but
            // SET_VRING_ENABLE (or DRIVER_OK) has not. QEMU creates every kick eventfd already
            // signalled (virtio_bus_set_host_notifier: event_notifier_init(notifier, 1)) so that the
            // backend looks at the ring once, and a guest may kick while QEMU's start messages are
            // still queued on the socket. The kick is kept and delivered once the ring runs.
            if (!ring.KickPending) _counters.Increment("vhost-user.kicks-deferred");
            ring.KickPending = true;
            return;
        }
        Kicked(index);
    }

    /// <summary>A kick reaches the device (notify writes before the requests it announces are
    /// flushed by the device itself, see <see cref="ITransportServices.FlushNotifyWrites"/>).</summary>
    private void Kicked(int index)
    {
        _owner.OnKick();
        _device.NotifyQueue(index);
    }

    /// <summary>Delivers the kicks that arrived before their ring ran, once it runs on a device with
    /// DRIVER_OK (each at most once).</summary>
    public void DeliverDeferredKicks()
    {
        if (_owner.IsClosed || !_device.Status.HasFlag(DeviceStatus.DriverOk)) return;
        for (int i = 0; i < _device.QueueCount && i < _rings.Length; i++)
        {
            Vring ring = _rings[i];
            if (!ring.KickPending || !ring.Running) continue;
            ring.KickPending = false;
            Kicked(i);
        }
    }

    /// <summary>Starts ring <paramref name="index"/> on the device once it has everything (size,
    /// addresses, a kick fd, enabled), then delivers kicks that waited for a ring to run. Queues past
    /// the device's own (per-region vectors) only carry call fds and never start.</summary>
    public string? TryRun(int index)
    {
        string? error = Start(index);
        DeliverDeferredKicks();
        return error;
    }

    private string? Start(int index)
    {
        Vring ring = _rings[index];
        if (ring.Running || !ring.Started || !ring.Enabled || ring.Layout is not { } layout || ring.Size == 0) return null;
        if (index >= _device.QueueCount) return null;
        if (index == Virtio.ControlQueue && _stoppedControl is { } stopped)
        {
            _stoppedControl = null;
            if (stopped.Layout != layout || stopped.Size != ring.Size || stopped.Base != ring.Base)
                ResetForNewDriver($"the controlq restarts at base {ring.Base} ({layout}), it stopped at base {stopped.Base} ({stopped.Layout})");
        }
        if (EnsureFeaturesOk() is { } notReady) return notReady;
        if (CheckLayout(layout, ring.Size) is { } bad) return $"ring {index}: {bad}";
        var settings = new QueueSettings(ring.Size, layout.Descriptors, layout.Available, layout.Used, ring.Base);
        if (!_device.TryStartQueue(index, settings))
            return $"the device refused to start queue {index} ({settings})";
        ring.Running = true;
        if (!_rings[Virtio.ControlQueue].Running || Pending) return null;
        if (!_device.Status.HasFlag(DeviceStatus.DriverOk))
        {
            // The running controlq is the start. QEMU 11.1.3 never sends SET_STATUS with DRIVER_OK
            // for vhost-user-test-device (its "last queue pair" check skips it), and a frontend
            // without STATUS never sends any status at all.
            if (Advance(DeviceStatus.DriverOk) is { } error) return error;
        }
        if (_device.Status.HasFlag(DeviceStatus.DriverOk) && !_owner.IsStarted) _owner.OnRunning();
        return null;
    }

    /// <summary>A device ring whose kick arrived but that does not run yet (waits for SET_VRING_ENABLE).</summary>
    public bool Pending
    {
        get
        {
            for (int i = 0; i < _device.QueueCount && i < _rings.Length; i++)
                if (_rings[i].Started && !_rings[i].Running) return true;
            return false;
        }
    }

    /// <summary>The ring layout check every transport applies (<see cref="TransportRules.CheckRingLayout"/>);
    /// a ring whose size is not known yet is checked as one entry.</summary>
    public string? CheckLayout(RingLayout layout, ushort size) =>
        TransportRules.CheckRingLayout(layout.Descriptors, layout.Available, layout.Used, Math.Max(size, (ushort)1), _memory);

    private string? EnsureFeaturesOk()
    {
        if (_device.Status.HasFlag(DeviceStatus.FeaturesOk)) return null;
        return Advance(DeviceStatus.FeaturesOk);
    }

    /// <summary>Drives the device to <paramref name="target"/> one bit at a time in the order a
    /// driver would (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK), adding the bits the frontend left
    /// out: a frontend may say FEATURES_OK alone (QEMU's first SET_STATUS), or nothing at all.</summary>
    public string? Advance(DeviceStatus target)
    {
        DeviceStatus want = target;
        if (want.HasFlag(DeviceStatus.DriverOk)) want |= DeviceStatus.FeaturesOk;
        if (want.HasFlag(DeviceStatus.FeaturesOk)) want |= DeviceStatus.Driver;
        if (want.HasFlag(DeviceStatus.Driver)) want |= DeviceStatus.Acknowledge;
        foreach (DeviceStatus bit in (ReadOnlySpan<DeviceStatus>)[DeviceStatus.Acknowledge, DeviceStatus.Driver, DeviceStatus.FeaturesOk, DeviceStatus.DriverOk])
        {
            DeviceStatus current = _device.Status;
            if (!want.HasFlag(bit) || current.HasFlag(bit)) continue;
            if (bit == DeviceStatus.FeaturesOk && Features is null) return "FEATURES_OK before SET_FEATURES";
            if (!_device.TrySetStatus(current | bit))
                return $"the device refused status {current | bit} (now {current})";
        }
        DeviceStatus extra = target & (DeviceStatus.Failed | DeviceStatus.DeviceNeedsReset);
        if (extra != 0 && (_device.Status & extra) != extra && !_device.TrySetStatus(_device.Status | extra))
            return $"the device refused status {_device.Status | extra}";
        return null;
    }

    public void Dispose()
    {
        foreach (Vring ring in _rings) ring.Dispose();
    }

    private readonly record struct StoppedControl(RingLayout Layout, ushort Size, ushort Base);
}
