using Vism.Abstractions;
using Vism.Native;

namespace Vism.Driver;

/// <summary>
/// Device side and driver side of one device in one process, without sockets: an
/// <see cref="ITransport"/> for the device and an <see cref="IDriverTransport"/> for the driver.
/// Guest RAM is a memfd the device maps separately (as a vhost-user backend maps QEMU's RAM);
/// region blocks are mapped with MAP_FIXED into a reserved driver-side REGIONS window (as QEMU maps
/// SHMEM_MAP into the BAR); kicks, queue interrupts, config interrupts and per-region vectors are
/// eventfds. Map requests complete asynchronously, on a later turn of the device's loop, as they
/// would over a socket. Like QEMU, it drops every window mapping when the device is reset.
/// NOTIFY writes are trapped (as MMIO does): <see cref="ShmAddress"/> of NOTIFY is 0 and
/// <see cref="WriteNotify"/> forwards the write.
/// </summary>
public sealed class InMemoryTransport : ITransport, IDriverTransport, ITransportServices
{
    private readonly Lock _lock = new();
    private readonly SortedDictionary<ulong, WindowMapping> _mappings = new();
    private readonly List<Action> _held = [];
    private readonly TimeSpan _callTimeout;
    private IVirtioDevice? _device;
    private GuestRam? _deviceView;
    private Mapping? _regionsWindow;
    private EventFd[] _queueSignals = [];
    private EventFd[] _vectors = [];
    private readonly EventFd _configSignal = EventFd.Create();
    private bool _disposed;

    /// <summary>Creates the transport and its guest RAM.</summary>
    /// <param name="ramSize">Bytes of driver memory (rings and buffers).</param>
    /// <param name="vectorCount">Per-region interrupt vectors offered (VIRTIO_ISM_F_EVENT_IRQ).</param>
    /// <param name="callTimeout">How long a driver call waits for the device's loop (default 30 s).</param>
    public InMemoryTransport(ulong ramSize = 4 << 20, int vectorCount = 0, TimeSpan? callTimeout = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(vectorCount);
        Ram = new GuestRam(ramSize);
        VectorCount = vectorCount;
        _callTimeout = callTimeout ?? TimeSpan.FromSeconds(30);
    }

    /// <summary>A mapping in the driver-side REGIONS window.</summary>
    /// <param name="Length">Bytes mapped.</param>
    /// <param name="Writable">Whether it was mapped read-write.</param>
    public readonly record struct WindowMapping(ulong Length, bool Writable);

    /// <summary>Test hook, called on the loop for each map request with its window offset: a
    /// non-null result fails that request with the result as the reason.</summary>
    public Func<ulong, string?>? MapFault { get; set; }

    /// <summary>Test hook like <see cref="MapFault"/>, for unmap requests.</summary>
    public Func<ulong, string?>? UnmapFault { get; set; }

    /// <summary>Test hook: while true, map and unmap answers are held back until
    /// <see cref="ReleaseHeldAnswers"/> (a VMM that is slow to answer).</summary>
    public bool HoldAnswers { get; set; }

    /// <summary>Map and unmap answers held back by <see cref="HoldAnswers"/>.</summary>
    public int HeldAnswers
    {
        get { lock (_lock) return _held.Count; }
    }

    /// <summary>Delivers every held answer, in order, on the device's loop.</summary>
    public void ReleaseHeldAnswers()
    {
        List<Action> held;
        lock (_lock)
        {
            held = [.. _held];
            _held.Clear();
        }
        foreach (Action answer in held)
            Device.Loop.Post(answer);
    }

    /// <summary>The device served (after <see cref="Start"/>).</summary>
    public IVirtioDevice Device => _device ?? throw new InvalidOperationException("the transport is not started");

    /// <summary>Map requests that succeeded so far.</summary>
    public int MapCount { get; private set; }

    /// <summary>Unmap requests that succeeded so far.</summary>
    public int UnmapCount { get; private set; }

    /// <summary>The current REGIONS window mappings by offset (a copy; any thread).</summary>
    public IReadOnlyDictionary<ulong, WindowMapping> Mappings
    {
        get { lock (_lock) return new Dictionary<ulong, WindowMapping>(_mappings); }
    }

    /// <summary>Creates a transport, starts it for <paramref name="device"/> on the device's loop and returns it.</summary>
    /// <param name="device">The device.</param>
    /// <param name="ramSize">Bytes of driver memory.</param>
    /// <param name="vectorCount">Per-region vectors offered.</param>
    /// <returns>The started transport.</returns>
    public static InMemoryTransport StartFor(IVirtioDevice device, ulong ramSize = 4 << 20, int vectorCount = 0)
    {
        var t = new InMemoryTransport(ramSize, vectorCount);
        try
        {
            t.RunOnLoop(device.Loop, () => { t.Start(device); return true; });
            return t;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    // ---- ITransport ----

    /// <inheritdoc />
    public string Endpoint => "in-memory";

    /// <inheritdoc cref="ITransport.VectorCount" />
    public int VectorCount { get; }

    /// <inheritdoc />
    public void Start(IVirtioDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (_device is not null)
            throw new InvalidOperationException("the transport already serves a device");
        _device = device;
        _deviceView = Ram.CreateView();
        ulong regions = WindowLength(ShmId.Regions);
        if (regions > 0)
            _regionsWindow = Mapping.Reserve(regions);
        _queueSignals = new EventFd[device.QueueCount];
        for (int i = 0; i < _queueSignals.Length; i++)
            _queueSignals[i] = EventFd.Create();
        _vectors = new EventFd[VectorCount];
        for (int i = 0; i < _vectors.Length; i++)
            _vectors[i] = EventFd.Create();
        device.Connect(this);
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    // ---- ITransportServices (device side, on the loop) ----

    /// <inheritdoc />
    public IGuestMemory Memory => _deviceView ?? throw new InvalidOperationException("the transport is not started");

    /// <inheritdoc />
    public void SignalQueue(int queueIndex)
    {
        if ((uint)queueIndex < (uint)_queueSignals.Length)
            _queueSignals[queueIndex].Signal();
    }

    /// <inheritdoc />
    public void SignalConfigChange() => _configSignal.Signal();

    /// <inheritdoc />
    public void SignalVector(int vector)
    {
        if ((uint)vector < (uint)_vectors.Length)
            _vectors[vector].Signal();
    }

    /// <inheritdoc />
    public bool CanMap => _device is { } d && (d.Status & (DeviceStatus.DriverOk | DeviceStatus.DeviceNeedsReset)) == DeviceStatus.DriverOk;

    /// <inheritdoc />
    public ValueTask<string?> MapAsync(ShmId shmId, ulong windowOffset, IMemoryBlock block, ulong length, bool writable)
    {
        string? failure = MapNow(shmId, windowOffset, block, length, writable);
        return Later(failure);
    }

    /// <inheritdoc />
    public ValueTask<string?> UnmapAsync(ShmId shmId, ulong windowOffset, ulong length)
    {
        string? failure;
        lock (_lock)
        {
            if (shmId != ShmId.Regions || _regionsWindow is null)
                failure = $"window {shmId} has no mappings";
            else if (UnmapFault?.Invoke(windowOffset) is { } injected)
                failure = injected;
            else if (!_mappings.TryGetValue(windowOffset, out WindowMapping m) || m.Length != length)
                failure = $"no mapping of {length} bytes at 0x{windowOffset:x}";
            else
            {
                _regionsWindow.UnmapFixed(windowOffset, length);
                _mappings.Remove(windowOffset);
                UnmapCount++;
                failure = null;
            }
        }
        return Later(failure);
    }

    private string? MapNow(ShmId shmId, ulong windowOffset, IMemoryBlock block, ulong length, bool writable)
    {
        if (shmId != ShmId.Regions || _regionsWindow is null)
            return $"window {shmId} cannot be mapped into";
        if (!CanMap)
            return "the device is not running";
        if (MapFault?.Invoke(windowOffset) is { } injected)
            return injected;
        lock (_lock)
        {
            if (TransportRules.CheckMap(shmId, _regionsWindow.Length, windowOffset, length, block,
                    _mappings.Select(m => new MappedRange(m.Key, m.Value.Length))) is { } refused)
                return refused;
            try
            {
                _regionsWindow.MapFixed(windowOffset, block.Handle, block.Offset, length, writable);
            }
            catch (PosixException ex)
            {
                return ex.Message;
            }
            _mappings.Add(windowOffset, new WindowMapping(length, writable));
            MapCount++;
        }
        return null;
    }

    /// <summary>Completes on a later turn of the loop, as an answer over a socket would.</summary>
    private ValueTask<string?> Later(string? result)
    {
        var tcs = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        Action answer = () => tcs.SetResult(result);
        lock (_lock)
        {
            if (HoldAnswers)
            {
                _held.Add(answer);
                return new ValueTask<string?>(tcs.Task);
            }
        }
        Device.Loop.Post(answer);
        return new ValueTask<string?>(tcs.Task);
    }

    private void DropMappings()
    {
        lock (_lock)
        {
            if (_regionsWindow is not null)
                foreach ((ulong at, WindowMapping m) in _mappings)
                    _regionsWindow.UnmapFixed(at, m.Length);
            _mappings.Clear();
        }
    }

    // ---- IDriverTransport (driver side, any thread but the loop) ----

    /// <inheritdoc />
    public GuestRam Ram { get; }

    /// <inheritdoc />
    public uint DeviceId => Call(d => d.DeviceId);

    /// <inheritdoc />
    public ulong ReadDeviceFeatures() => Call(d => d.DeviceFeatures);

    /// <inheritdoc />
    public void WriteDriverFeatures(ulong features) => Call(d => d.TrySetDriverFeatures(features));

    /// <inheritdoc />
    public DeviceStatus ReadStatus() => Call(d => d.Status);

    /// <inheritdoc />
    public void WriteStatus(DeviceStatus status) => Call(d =>
    {
        bool ok = d.TrySetStatus(status);
        if (status == DeviceStatus.Reset)
            DropMappings();
        return ok;
    });

    /// <inheritdoc />
    public void ReadConfig(uint offset, Span<byte> destination)
    {
        int length = destination.Length;
        byte[]? bytes = Call(d =>
        {
            var buffer = new byte[length];
            return d.TryReadConfig(offset, buffer) ? buffer : null;
        });
        if (bytes is null)
            throw new DriverTransportException($"the device refused a {length}-byte config read at {offset}");
        bytes.CopyTo(destination);
    }

    /// <inheritdoc />
    public uint ReadConfigGeneration() => Call(d => d.ConfigGeneration);

    /// <inheritdoc />
    public ushort MaxQueueSize(int index) => Call(d => index >= 0 && index < d.QueueCount ? d.MaxQueueSize : (ushort)0);

    /// <inheritdoc />
    public void StartQueue(int index, QueueSettings settings)
    {
        if (!Call(d => d.TryStartQueue(index, settings)))
            throw new DriverTransportException($"the device refused to start queue {index}");
    }

    /// <inheritdoc />
    public void Kick(int index) => Post(d => d.NotifyQueue(index));

    /// <inheritdoc />
    public bool WaitQueue(int index, TimeSpan timeout) =>
        (uint)index < (uint)_queueSignals.Length && _queueSignals[index].Wait(timeout) != 0;

    /// <inheritdoc />
    public ulong ShmLength(ShmId id) => WindowLength(id);

    /// <inheritdoc />
    public nint ShmAddress(ShmId id) => id == ShmId.Regions ? _regionsWindow?.Address ?? 0 : 0;

    /// <inheritdoc />
    public void WriteNotify(ulong offset, byte value = 1) => Post(d => d.NotifyWrite(offset));

    /// <inheritdoc />
    public bool WaitVector(int vector, TimeSpan timeout) =>
        (uint)vector < (uint)_vectors.Length && _vectors[vector].Wait(timeout) != 0;

    /// <summary>Waits for a configuration-change interrupt (for example after DEVICE_NEEDS_RESET).</summary>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>Whether one arrived.</returns>
    public bool WaitConfigChange(TimeSpan timeout) => _configSignal.Wait(timeout) != 0;

    /// <summary>Number of queue interrupts pending on <paramref name="index"/> (reads and clears them).</summary>
    /// <param name="index">Queue index.</param>
    /// <returns>How many times the device signalled the queue since the last wait.</returns>
    public ulong DrainQueueSignals(int index) => (uint)index < (uint)_queueSignals.Length ? _queueSignals[index].Drain() : 0;

    /// <summary>Runs <paramref name="work"/> on the device's loop and waits for it (test helper).</summary>
    /// <typeparam name="T">Result type.</typeparam>
    /// <param name="work">The work.</param>
    /// <returns>Its result.</returns>
    public T Call<T>(Func<IVirtioDevice, T> work)
    {
        IVirtioDevice device = Device;
        return RunOnLoop(device.Loop, () => work(device));
    }

    private void Post(Action<IVirtioDevice> work)
    {
        IVirtioDevice device = Device;
        device.Loop.Post(() => work(device));
    }

    private T RunOnLoop<T>(IDeviceLoop loop, Func<T> work)
    {
        if (loop.IsOnLoop)
            return work();
        Task<T> task = loop.InvokeAsync(work);
        if (!task.Wait(_callTimeout))
            throw new DriverTransportException($"the device's loop did not answer within {_callTimeout}");
        return task.Result;
    }

    private ulong WindowLength(ShmId id)
    {
        if (_device is null)
            return 0;
        foreach (SharedMemoryWindow w in _device.SharedMemory)
            if (w.Id == id)
                return w.Length;
        return 0;
    }

    /// <summary>Disconnects the device (it releases its attachments) and frees every resource.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        if (_device is not null)
        {
            try
            {
                Call(d => { d.Disconnect(); DropMappings(); return true; });
            }
            catch (DriverTransportException)
            {
                // The loop is gone; nothing more to tell the device.
            }
        }
        _regionsWindow?.Dispose();
        _deviceView?.Dispose();
        foreach (EventFd e in _queueSignals) e.Dispose();
        foreach (EventFd e in _vectors) e.Dispose();
        _configSignal.Dispose();
        Ram.Dispose();
    }
}
