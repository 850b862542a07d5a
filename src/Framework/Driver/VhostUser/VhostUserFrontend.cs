using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Driver.VhostUser;

/// <summary>
/// A vhost-user frontend that does what QEMU does for <c>vhost-user-test-device-pci</c>, so tests,
/// the matrix and users' programs can drive a vhost-user device without a VMM:
/// <list type="bullet">
/// <item>at connect: the realize handshake QEMU 11.1 performs (features, protocol features, queue
/// count, memory slots, backend channel, owner, call/err fds, GET_SHMEM_CONFIG) and one address-space
/// reservation per shared memory region;</item>
/// <item>the driver's status lives here, as in QEMU's virtio-pci; DRIVER_OK starts the backend
/// (SET_FEATURES, memory table, rings, kick and call eventfds, SET_VRING_ENABLE, SET_STATUS) and
/// status 0 stops it (GET_VRING_BASE, SET_STATUS 0) and drops every shared memory mapping;</item>
/// <item>the backend channel is served on a loop thread: SHMEM_MAP/UNMAP map the fd into the
/// reservation (MAP_FIXED), CONFIG_CHANGE_MSG bumps the config generation.</item>
/// </list>
/// Requests on the main socket are serialised; methods may be called from any thread.
/// </summary>
public sealed class VhostUserFrontend : IDriverTransport
{
    private const ulong ProtocolFeaturesBit = 1UL << VhostUserConstants.ProtocolFeaturesBit;

    private readonly VhostUserFrontendOptions _options;
    private readonly UnixSocket _socket;
    private readonly MessageFramer _replies;
    private readonly Lock _lock = new();
    private readonly EventLoop? _ownLoop;
    private readonly UnixSocket _backendSocket;
    private readonly MessageFramer _backendFramer;
    private readonly IDisposable _backendWatch;
    private readonly EventFd[] _kicks;
    private readonly EventFd[] _calls;
    private readonly EventFd[] _errs;
    private readonly QueueSettings?[] _queues;
    private readonly bool[] _queueSent;
    private SharedMemoryWindows _windows;
    private ulong _deviceFeatures;
    private ulong _driverFeatures;
    private DeviceStatus _status;
    private bool _memorySent;
    private int _configGeneration;
    private bool _disposed;

    private VhostUserFrontend(UnixSocket socket, GuestRam ram, VhostUserFrontendOptions options, IDeviceLoop? loop)
    {
        _socket = socket;
        Ram = ram;
        _options = options;
        _replies = new MessageFramer(socket, ShmemConfig.Size + 64);
        (UnixSocket ours, UnixSocket theirs) = UnixSocket.Pair();
        _backendSocket = ours;
        _backendFramer = new MessageFramer(ours, 4096);
        IDeviceLoop backendLoop = loop ?? (_ownLoop = new EventLoop("vhost-user-frontend"));
        Fd.SetNonBlocking(ours.Handle);
        _backendWatch = backendLoop.WatchReadable(ours.Handle, OnBackendReadable);
        _windows = new SharedMemoryWindows([]);
        _kicks = _calls = _errs = [];
        _queues = [];
        _queueSent = [];
        try
        {
            // The realize sequence QEMU 11.1.3 was observed to send.
            _deviceFeatures = RequestU64(FrontendRequest.GetFeatures);
            ulong offered = (_deviceFeatures & ProtocolFeaturesBit) != 0 ? RequestU64(FrontendRequest.GetProtocolFeatures) : 0;
            ProtocolFeatures = offered & options.ProtocolFeatures;
            if ((_deviceFeatures & ProtocolFeaturesBit) != 0)
                Send(FrontendRequest.SetProtocolFeatures, U64Payload.ToBytes(ProtocolFeatures));
            int queues = options.QueueCount;
            if (Has(ProtocolFeature.Mq))
            {
                ulong max = RequestU64(FrontendRequest.GetQueueNum);
                if (queues == 0) queues = (int)Math.Min(max, 256);
                else if ((ulong)queues > max)
                    throw new DriverTransportException($"the backend supports {max} queues, {queues} wanted");
            }
            QueueCount = Math.Max(queues, 1);
            if (options.VectorCount < 0 || options.VectorCount > QueueCount)
                throw new DriverTransportException($"{options.VectorCount} vectors do not fit {QueueCount} queues");
            if (Has(ProtocolFeature.ConfigureMemSlots)) MaxMemSlots = RequestU64(FrontendRequest.GetMaxMemSlots);
            if (Has(ProtocolFeature.BackendReq))
                Send(FrontendRequest.SetBackendReqFd, [], [theirs.Handle]);
            Send(FrontendRequest.SetOwner, []);
            _deviceFeatures = RequestU64(FrontendRequest.GetFeatures);
            _kicks = new EventFd[QueueCount];
            _calls = new EventFd[QueueCount];
            _errs = new EventFd[QueueCount];
            _queues = new QueueSettings?[QueueCount];
            _queueSent = new bool[QueueCount];
            for (int i = 0; i < QueueCount; i++)
            {
                _kicks[i] = EventFd.Create();
                _calls[i] = EventFd.Create();
                _errs[i] = EventFd.Create();
                Send(FrontendRequest.SetVringCall, U64Payload.ToBytes((ulong)i), [_calls[i].Handle]);
                Send(FrontendRequest.SetVringErr, U64Payload.ToBytes((ulong)i), [_errs[i].Handle]);
            }
            if (Has(ProtocolFeature.Shmem))
            {
                byte[] reply = Request(FrontendRequest.GetShmemConfig, []);
                if (!ShmemConfig.TryRead(reply, out ulong[] sizes))
                    throw new DriverTransportException($"GET_SHMEM_CONFIG reply of {reply.Length} bytes is malformed");
                foreach (ulong s in sizes)
                    if (s % TransportRules.PageSize != 0) throw new DriverTransportException($"shared memory size {s} is not a page multiple");
                _windows.Dispose();
                _windows = new SharedMemoryWindows(sizes);
            }
        }
        catch
        {
            Release();
            throw;
        }
        finally
        {
            theirs.Dispose(); // the backend has its own copy now
        }
    }

    /// <summary>Connects to a backend listening on <paramref name="socketPath"/> and performs the realize handshake.</summary>
    /// <param name="socketPath">The backend's socket.</param>
    /// <param name="ram">Guest RAM shared with the backend (the caller keeps owning it).</param>
    /// <param name="options">Behaviour; null = QEMU 11.1's.</param>
    /// <param name="loop">Loop serving the backend channel; null = a thread of its own.</param>
    public static VhostUserFrontend Connect(string socketPath, GuestRam ram, VhostUserFrontendOptions? options = null, IDeviceLoop? loop = null)
    {
        UnixSocket socket;
        try
        {
            socket = UnixSocket.Connect(socketPath);
        }
        catch (PosixException ex)
        {
            throw new DriverTransportException($"cannot connect to {socketPath}: {ex.Message}", ex);
        }
        try
        {
            return new VhostUserFrontend(socket, ram, options ?? new VhostUserFrontendOptions(), loop);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public GuestRam Ram { get; }

    /// <inheritdoc />
    public uint DeviceId => _options.DeviceId;

    /// <summary>Protocol features both sides accepted.</summary>
    public ulong ProtocolFeatures { get; }

    /// <summary>Queues driven (QEMU <c>num_vqs</c>).</summary>
    public int QueueCount { get; }

    /// <summary>GET_MAX_MEM_SLOTS, when CONFIGURE_MEM_SLOTS was negotiated.</summary>
    public ulong MaxMemSlots { get; }

    /// <summary>Whether DRIVER_OK started the backend and it has not been stopped.</summary>
    public bool IsStarted { get; private set; }

    /// <summary>Live mappings in a shared memory region (tests).</summary>
    public int MappingCount(ShmId id) => _windows.Count((byte)id);

    /// <inheritdoc />
    public int VectorCount => _options.VectorCount;

    /// <inheritdoc />
    public ulong ReadDeviceFeatures() => _deviceFeatures & ~ProtocolFeaturesBit;

    /// <inheritdoc />
    public void WriteDriverFeatures(ulong features)
    {
        lock (_lock) _driverFeatures = features;
    }

    /// <inheritdoc />
    public DeviceStatus ReadStatus()
    {
        lock (_lock)
        {
            // As virtio-pci in QEMU: the status is the frontend's; a started backend may add NEEDS_RESET.
            if (IsStarted && Has(ProtocolFeature.Status)
                && ((DeviceStatus)RequestU64(FrontendRequest.GetStatus)).HasFlag(DeviceStatus.DeviceNeedsReset))
                return _status | DeviceStatus.DeviceNeedsReset;
            return _status;
        }
    }

    /// <inheritdoc />
    public void WriteStatus(DeviceStatus status)
    {
        lock (_lock)
        {
            if (status == DeviceStatus.Reset)
            {
                Stop();
                _status = 0;
                Array.Clear(_queues);
                return;
            }
            if (status.HasFlag(DeviceStatus.FeaturesOk) && !_status.HasFlag(DeviceStatus.FeaturesOk)
                && (_driverFeatures & ~ReadDeviceFeatures()) != 0)
                status &= ~DeviceStatus.FeaturesOk; // QEMU refuses features the device did not offer
            bool start = status.HasFlag(DeviceStatus.DriverOk) && !_status.HasFlag(DeviceStatus.DriverOk);
            _status = status;
            if (start) Start();
        }
    }

    /// <inheritdoc />
    public void ReadConfig(uint offset, Span<byte> destination)
    {
        var header = new ConfigHeader(offset, (uint)destination.Length, 0);
        byte[] reply = Request(FrontendRequest.GetConfig, header.Encode(new byte[destination.Length]));
        if (reply.Length != ConfigHeader.Size + destination.Length)
            throw new DriverTransportException($"GET_CONFIG of {destination.Length} bytes at {offset} failed (reply of {reply.Length} bytes)");
        reply.AsSpan(ConfigHeader.Size).CopyTo(destination);
    }

    /// <inheritdoc />
    public uint ReadConfigGeneration() => (uint)Volatile.Read(ref _configGeneration);

    /// <inheritdoc />
    public ushort MaxQueueSize(int index) => (uint)index < (uint)QueueCount ? _options.QueueSize : (ushort)0;

    /// <inheritdoc />
    public void StartQueue(int index, QueueSettings settings)
    {
        if ((uint)index >= (uint)QueueCount) throw new ArgumentOutOfRangeException(nameof(index));
        lock (_lock)
        {
            _queues[index] = settings;
            if (IsStarted)
            {
                SendRing(index);
                if ((_deviceFeatures & ProtocolFeaturesBit) != 0)
                    Send(FrontendRequest.SetVringEnable, new VringState((uint)index, 1).ToBytes());
            }
        }
    }

    /// <inheritdoc />
    public void Kick(int index) => _kicks[index].Signal();

    /// <inheritdoc />
    public bool WaitQueue(int index, TimeSpan timeout) => _calls[index].Wait(timeout) != 0;

    /// <inheritdoc />
    public ulong ShmLength(ShmId id) => _windows.Length((byte)id);

    /// <inheritdoc />
    public nint ShmAddress(ShmId id) => _windows.Address((byte)id);

    /// <inheritdoc />
    public void WriteNotify(ulong offset, byte value = 1)
    {
        if (!_windows.TryWriteByte((byte)ShmId.Notify, offset, value))
            throw new DriverTransportException($"NOTIFY offset 0x{offset:x} is not mapped (is the device started?)");
    }

    /// <inheritdoc />
    /// <remarks>The NOTIFY window is polled memory here: the backend sees a write only as a slot that
    /// differs from its last snapshot. So this adds 1 to the slot's first byte (a value that always
    /// differs from the one there) and then, with <see cref="VhostUserFrontendOptions.NotifyDoorbell"/>,
    /// kicks the controlq so the backend scans now.</remarks>
    public void Notify(ulong offset)
    {
        if (!_windows.TryIncrementByte((byte)ShmId.Notify, offset))
            throw new DriverTransportException($"NOTIFY offset 0x{offset:x} is not mapped (is the device started?)");
        if (_options.NotifyDoorbell && _kicks.Length > 0)
            _kicks[Virtio.ControlQueue].Signal();
    }

    /// <inheritdoc />
    public bool WaitVector(int vector, TimeSpan timeout, TimeSpan spin)
    {
        if ((uint)vector >= (uint)VectorCount) throw new ArgumentOutOfRangeException(nameof(vector));
        return _calls[QueueCount - VectorCount + vector].Wait(timeout, spin) != 0;
    }

    /// <inheritdoc />
    public bool WaitQueue(int index, TimeSpan timeout, TimeSpan spin) => _calls[index].Wait(timeout, spin) != 0;

    /// <inheritdoc />
    public bool WaitVector(int vector, TimeSpan timeout)
    {
        if ((uint)vector >= (uint)VectorCount) throw new ArgumentOutOfRangeException(nameof(vector));
        return _calls[QueueCount - VectorCount + vector].Wait(timeout) != 0;
    }

    // ---- start / stop, as QEMU's vhost_dev_start / vhost_dev_stop ---------------------------------

    private void Start()
    {
        ulong features = _driverFeatures | (_deviceFeatures & ProtocolFeaturesBit);
        Send(FrontendRequest.SetFeatures, U64Payload.ToBytes(features));
        if (Has(ProtocolFeature.Status)) AddStatus(DeviceStatus.FeaturesOk);
        SendMemory();
        // The order QEMU 11.1.3 was seen to use: rings the driver set up, enable every ring, then call fds.
        for (int i = 0; i < QueueCount; i++)
            if (_queues[i] is not null) SendRing(i);
        if ((_deviceFeatures & ProtocolFeaturesBit) != 0)
            for (int i = 0; i < QueueCount; i++)
                Send(FrontendRequest.SetVringEnable, new VringState((uint)i, 1).ToBytes());
        for (int i = 0; i < QueueCount; i++)
            Send(FrontendRequest.SetVringCall, U64Payload.ToBytes((ulong)i), [_calls[i].Handle]);
        if (Has(ProtocolFeature.Status) && _options.SendStartStopStatus)
            AddStatus(DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.DriverOk);
        IsStarted = true;
    }

    private void Stop()
    {
        if (IsStarted)
        {
            // QEMU 11.1.3's vhost_dev_stop for this device: disable every ring, then GET_VRING_BASE.
            if ((_deviceFeatures & ProtocolFeaturesBit) != 0)
                for (int i = 0; i < QueueCount; i++)
                    Send(FrontendRequest.SetVringEnable, new VringState((uint)i, 0).ToBytes());
            for (int i = 0; i < QueueCount; i++)
            {
                if (!_queueSent[i]) continue;
                Request(FrontendRequest.GetVringBase, new VringState((uint)i, 0).ToBytes());
                _queueSent[i] = false;
            }
            if (_options.SendStartStopStatus)
            {
                if (Has(ProtocolFeature.Status)) Send(FrontendRequest.SetStatus, U64Payload.ToBytes(0));
                else if (Has(ProtocolFeature.ResetDevice)) Send(FrontendRequest.ResetDevice, []);
            }
            IsStarted = false;
        }
        _windows.DropAll(); // virtio_reset drops every shared memory mapping
    }

    private void AddStatus(DeviceStatus bits)
    {
        ulong now = RequestU64(FrontendRequest.GetStatus);
        Send(FrontendRequest.SetStatus, U64Payload.ToBytes(now | (ulong)bits));
    }

    private void SendMemory()
    {
        var region = new MemoryRegionDescriptor(Ram.GuestBase, Ram.Size, (ulong)Ram.HostAddress, 0);
        if (Has(ProtocolFeature.ConfigureMemSlots))
        {
            if (_memorySent) return; // QEMU sends only the differences to its shadow table
            Send(FrontendRequest.AddMemReg, region.EncodeSingle(), [Ram.Handle]);
        }
        else
        {
            Send(FrontendRequest.SetMemTable, MemoryRegionDescriptor.EncodeTable([region]), [Ram.Handle]);
        }
        _memorySent = true;
    }

    private void SendRing(int i)
    {
        QueueSettings q = _queues[i]!.Value;
        Send(FrontendRequest.SetVringNum, new VringState((uint)i, q.Size).ToBytes());
        Send(FrontendRequest.SetVringBase, new VringState((uint)i, q.NextAvail).ToBytes());
        Send(FrontendRequest.SetVringAddr, new VringAddress((uint)i, 0, UserAddress(q.DescriptorTable), UserAddress(q.UsedRing),
            UserAddress(q.AvailRing), 0).ToBytes());
        Send(FrontendRequest.SetVringKick, U64Payload.ToBytes((ulong)i), [_kicks[i].Handle]);
        _queueSent[i] = true;
    }

    private ulong UserAddress(ulong gpa) => (ulong)Ram.HostAddress + (gpa - Ram.GuestBase);

    // ---- main socket ----------------------------------------------------------------------------

    private bool Has(int protocolBit) => (ProtocolFeatures & (1UL << protocolBit)) != 0;

    /// <summary>Sends a request that has no reply of its own; with REPLY_ACK it waits for the ack.</summary>
    /// <exception cref="DriverTransportException">The backend refused it or is gone.</exception>
    public void Send(FrontendRequest request, byte[] payload, SafeHandle[]? fds = null)
    {
        lock (_lock)
        {
            bool ack = Has(ProtocolFeature.ReplyAck);
            Write(request, VhostUserConstants.Version | (ack ? VhostUserConstants.NeedReplyFlag : 0), payload, fds);
            if (!ack) return;
            byte[] reply = ReadReply(request);
            if (!U64Payload.TryRead(reply, out ulong v))
                throw new DriverTransportException($"{request}: ack of {reply.Length} bytes");
            if (v != 0) throw new DriverTransportException($"{request} refused by the backend (ack {v})");
        }
    }

    /// <summary>Sends a request that has a reply and returns the reply payload.</summary>
    /// <exception cref="DriverTransportException">The backend is gone or answered out of turn.</exception>
    public byte[] Request(FrontendRequest request, byte[] payload)
    {
        lock (_lock)
        {
            Write(request, VhostUserConstants.Version, payload, null);
            return ReadReply(request);
        }
    }

    private ulong RequestU64(FrontendRequest request)
    {
        byte[] reply = Request(request, []);
        if (!U64Payload.TryRead(reply, out ulong v))
            throw new DriverTransportException($"{request} failed (reply of {reply.Length} bytes)");
        return v;
    }

    private void Write(FrontendRequest request, uint flags, byte[] payload, SafeHandle[]? fds)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        try
        {
            _socket.Send(Message.Build((uint)request, flags, payload), fds);
        }
        catch (PosixException ex)
        {
            throw new DriverTransportException($"{request}: the backend is gone ({ex.Message})", ex);
        }
    }

    private byte[] ReadReply(FrontendRequest request)
    {
        try
        {
            if (!_socket.WaitReadable((int)_options.ReplyTimeout.TotalMilliseconds))
                throw new DriverTransportException($"{request}: no reply within {_options.ReplyTimeout.TotalSeconds:0.#} s");
            if (_replies.TryRead() != Vism.VhostUser.ReadStatus.Message)
                throw new DriverTransportException($"{request}: the backend closed the connection");
            MessageHeader h = _replies.Header;
            if (h.Request != (uint)request || h.Flags != VhostUserConstants.ReplyFlags)
                throw new DriverTransportException($"{request}: got reply {h.Request} with flags 0x{h.Flags:x}");
            return _replies.Payload.ToArray();
        }
        catch (Exception ex) when (ex is PosixException or VhostUserProtocolException)
        {
            throw new DriverTransportException($"{request}: {ex.Message}", ex);
        }
    }

    // ---- backend channel --------------------------------------------------------------------------

    private void OnBackendReadable()
    {
        try
        {
            while (true)
            {
                Vism.VhostUser.ReadStatus s = _backendFramer.TryRead();
                if (s != Vism.VhostUser.ReadStatus.Message) return;
                MessageHeader h = _backendFramer.Header;
                string? error = HandleBackendRequest(h, _backendFramer.Payload, _backendFramer.Fds);
                if (h.NeedsReply)
                    _backendSocket.Send(Message.BuildU64(h.Request, VhostUserConstants.ReplyFlags, error is null ? 0UL : 1UL));
            }
        }
        catch (Exception ex) when (ex is PosixException or VhostUserProtocolException)
        {
            _backendWatch.Dispose(); // the channel is broken, as QEMU closes it
        }
    }

    private string? HandleBackendRequest(MessageHeader h, ReadOnlySpan<byte> payload, List<SafeFileHandle> fds)
    {
        switch ((BackendRequest)h.Request)
        {
            case BackendRequest.ShmemMap when ShmemMapPayload.TryRead(payload, out ShmemMapPayload map):
                BackendMaps++;
                if (fds.Count != 1) return $"SHMEM_MAP with {fds.Count} fds";
                if (map.ShmId == (byte)ShmId.Regions) _options.DescriptorReceived?.Invoke(map.ShmOffset, fds[0], map.Writable);
                return _windows.Map(map, fds[0]);
            case BackendRequest.ShmemUnmap when ShmemMapPayload.TryRead(payload, out ShmemMapPayload unmap):
                BackendUnmaps++;
                return _windows.Unmap(unmap);
            case BackendRequest.ConfigChangeMsg:
                Interlocked.Increment(ref _configGeneration);
                return null;
            default:
                return $"unexpected backend request {h.Request} ({h.Size} bytes)";
        }
    }

    /// <summary>SHMEM_MAP requests received (tests).</summary>
    public int BackendMaps { get; private set; }

    /// <summary>SHMEM_UNMAP requests received (tests).</summary>
    public int BackendUnmaps { get; private set; }

    /// <summary>Closes the connection (the backend sees a disconnect) and releases everything.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
        }
        Release();
    }

    private void Release()
    {
        _socket.Dispose();
        _backendWatch.Dispose();
        _ownLoop?.Dispose();
        _backendFramer.Dispose();
        _backendSocket.Dispose();
        _replies.Dispose();
        _windows.Dispose();
        foreach (EventFd e in _kicks) e.Dispose();
        foreach (EventFd e in _calls) e.Dispose();
        foreach (EventFd e in _errs) e.Dispose();
    }
}
