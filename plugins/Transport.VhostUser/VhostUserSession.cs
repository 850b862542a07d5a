using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser;

/// <summary>A mapping in a window of the frontend.</summary>
internal readonly record struct WindowMapping(ShmId ShmId, ulong Offset, ulong Length);

/// <summary>
/// One frontend connection: the protocol state machine. Everything runs on the device's loop; the
/// socket is a raw non-blocking fd watched with <see cref="IDeviceLoop.WatchReadable"/>. Closing the
/// session (peer gone, framing error) releases every fd and mapping and disconnects the device.
/// </summary>
internal sealed class VhostUserSession : ITransportServices, IDisposable
{
    private const ulong ProtocolFeaturesMask = 1UL << VhostUserConstants.ProtocolFeaturesBit;
    private const int MaxLoggedErrors = 64;
    private const int MessagesPerTurn = 64;
    private const ulong PageSize = 4096;
    private const DeviceStatus Lifecycle = DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk;

    private readonly VhostUserTransport _transport;
    private readonly IVirtioDevice _device;
    private readonly VhostUserOptions _options;
    private readonly IDeviceLoop _loop;
    private readonly ILogger _log;
    private readonly IDeviceCounters _counters;
    private readonly UnixSocket _socket;
    private readonly MessageFramer _framer;
    private readonly Outbox _outbox;
    private readonly GuestMemoryTable _memory;
    private readonly Ring[] _rings;
    private readonly Dictionary<(ShmId, ulong), ulong> _mappings = [];
    private readonly SafeFileHandle? _notifyFd;
    private readonly Mapping? _notifyMap;
    private readonly NotifyPoller? _poller;
    private IDisposable? _watch;
    private BackendChannel? _backend;
    private ulong _protocolFeatures;
    private ulong? _features;
    private bool _started;
    private bool _closed;
    private bool _warnedNoShmem;
    private int _loggedErrors;
    private int _generation;
    private StoppedControl? _stoppedControl;

    public VhostUserSession(VhostUserTransport transport, IVirtioDevice device, UnixSocket socket, VhostUserOptions options,
        IDeviceLoop loop, ILogger log, IDeviceCounters counters)
    {
        _transport = transport;
        _device = device;
        _socket = socket;
        _options = options;
        _loop = loop;
        _log = log;
        _counters = counters;
        _framer = new MessageFramer(socket, RequestTable.MaxPayload);
        _outbox = new Outbox(socket, loop, reason => Close($"main socket: {reason}"));
        _memory = new GuestMemoryTable(options.MaxMemSlots);
        _rings = new Ring[device.QueueCount + options.Vectors];
        for (int i = 0; i < _rings.Length; i++) _rings[i] = new Ring();
        ulong notifyLength = NotifyWindowLength(device);
        if (notifyLength > 0)
        {
            _notifyFd = MemFd.Create($"vism-notify-{device.Description.Name}", notifyLength);
            _notifyMap = Mapping.Map(_notifyFd, 0, notifyLength);
            _poller = new NotifyPoller(device, _notifyMap, loop, counters, NotifyPollPolicy.From(options));
        }
        _watch = loop.WatchReadable(socket.Handle, OnReadable);
        device.Connect(this);
    }

    public bool IsClosed => _closed;

    /// <summary>Protocol features the frontend acked.</summary>
    public ulong AckedProtocolFeatures => _protocolFeatures;

    /// <summary>The NOTIFY poller (tests observe it).</summary>
    internal NotifyPoller? Poller => _poller;

    /// <summary>The backend channel, when the frontend sent one.</summary>
    internal BackendChannel? Backend => _backend;

    private ulong OfferedFeatures => _device.DeviceFeatures | ProtocolFeaturesMask;

    private bool Acked(int bit) => (_protocolFeatures & (1UL << bit)) != 0;

    // ---- ITransportServices -------------------------------------------------------------------

    /// <inheritdoc />
    public void FlushNotifyWrites()
    {
        if (_poller is not null && _device.SlotsInUse > 0)
            _poller.Scan();
    }

    public IGuestMemory Memory => _memory;

    public int VectorCount => _options.Vectors;

    public bool CanMap => MapBlocker() is null;

    public void SignalQueue(int queueIndex)
    {
        if ((uint)queueIndex >= (uint)_rings.Length || _rings[queueIndex].Call is not { } call || !call.Signal())
            _counters.Increment("vhost-user.signals-dropped");
    }

    public void SignalVector(int vector)
    {
        if ((uint)vector >= (uint)_options.Vectors)
        {
            _counters.Increment("vhost-user.signals-dropped");
            return;
        }
        SignalQueue(_device.QueueCount + vector);
    }

    public void SignalConfigChange()
    {
        if (_closed || _backend is null || !Acked(ProtocolFeature.BackendReq))
        {
            _counters.Increment("vhost-user.signals-dropped");
            return;
        }
        _ = _backend.Request(BackendRequest.ConfigChangeMsg, [], null, needReply: false);
    }

    public async ValueTask<string?> MapAsync(ShmId shmId, ulong windowOffset, IMemoryBlock block, ulong length, bool writable)
    {
        string? error = MapBlocker() ?? CheckWindowRange(shmId, windowOffset, length);
        if (error is null && length > block.Length)
            error = $"{length} bytes exceed the {block.Length}-byte block";
        if (error is null && block.Offset % PageSize != 0)
            error = $"block offset 0x{block.Offset:x} is not page aligned";
        if (error is null)
            error = await MapFd(shmId, windowOffset, block.Handle, block.Offset, length, writable);
        else
            ReportMapError("SHMEM_MAP", error);
        return error;
    }

    public async ValueTask<string?> UnmapAsync(ShmId shmId, ulong windowOffset, ulong length)
    {
        var mapping = new WindowMapping(shmId, windowOffset, length);
        if (_closed || _transport.IsStale(mapping))
            return null; // the frontend is gone or the mapping is already queued for removal at the next start
        if (!_mappings.TryGetValue((shmId, windowOffset), out ulong mapped) || mapped != length)
        {
            string missing = $"nothing is mapped at {shmId} +0x{windowOffset:x} with length 0x{length:x}";
            ReportMapError("SHMEM_UNMAP", missing);
            return missing;
        }
        _mappings.Remove((shmId, windowOffset));
        if (MapBlocker() is not null)
        {
            // Not started: QEMU 11.1.3 must not see SHMEM_* now. QEMU drops mappings on a device reset;
            // after a pause it keeps them, so the removal is sent at the next start.
            _transport.AddStale(mapping);
            return null;
        }
        string? error = await _backend!.Request(BackendRequest.ShmemUnmap, Payload(mapping, writable: false), null, Acked(ProtocolFeature.ReplyAck));
        if (error is not null)
        {
            _transport.AddStale(mapping);
            ReportMapError("SHMEM_UNMAP", error);
        }
        return error;
    }

    private string? MapBlocker()
    {
        if (_closed) return "no frontend is connected";
        if (!_started) return "the device is not started (QEMU 11.1.3 crashes on SHMEM_MAP while stopped)";
        if (!Acked(ProtocolFeature.Shmem) || !Acked(ProtocolFeature.BackendReq) || !Acked(ProtocolFeature.BackendSendFd))
            return "the frontend did not negotiate SHMEM, BACKEND_REQ and BACKEND_SEND_FD";
        if (_backend is null) return "the frontend has no backend channel (SET_BACKEND_REQ_FD)";
        return null;
    }

    private string? CheckWindowRange(ShmId shmId, ulong offset, ulong length)
    {
        SharedMemoryWindow? window = null;
        foreach (SharedMemoryWindow w in _device.SharedMemory)
            if (w.Id == shmId) window = w;
        if (window is not { } win) return $"the device has no shared memory window {shmId}";
        if (length == 0 || offset % PageSize != 0 || length % PageSize != 0)
            return $"[0x{offset:x}, +0x{length:x}) is empty or not page aligned";
        if (offset > win.Length || length > win.Length - offset)
            return $"[0x{offset:x}, +0x{length:x}) is outside the 0x{win.Length:x}-byte {shmId} window";
        foreach (((ShmId id, ulong at), ulong len) in _mappings)
            if (id == shmId && offset < at + len && at < offset + length)
                return $"[0x{offset:x}, +0x{length:x}) overlaps the mapping at 0x{at:x}";
        return null;
    }

    private async Task<string?> MapFd(ShmId shmId, ulong offset, SafeFileHandle fd, ulong fdOffset, ulong length, bool writable)
    {
        var key = (shmId, offset);
        int generation = _generation;
        _mappings[key] = length; // reserved while the reply is outstanding, so no overlapping map races it
        string? error = await _backend!.Request(BackendRequest.ShmemMap,
            new ShmemMapPayload((byte)shmId, fdOffset, offset, length, writable ? VhostUserConstants.MapFlagReadWrite : 0).ToBytes(),
            fd, Acked(ProtocolFeature.ReplyAck));
        if (error is not null)
        {
            if (generation == _generation && _mappings.TryGetValue(key, out ulong l) && l == length) _mappings.Remove(key);
            ReportMapError("SHMEM_MAP", error);
        }
        else if (shmId == ShmId.Regions)
        {
            _poller?.Activity();
        }
        return error;
    }

    private static byte[] Payload(WindowMapping m, bool writable) =>
        new ShmemMapPayload((byte)m.ShmId, 0, m.Offset, m.Length, writable ? VhostUserConstants.MapFlagReadWrite : 0).ToBytes();

    private void ReportMapError(string what, string error)
    {
        _counters.Increment(what == "SHMEM_MAP" ? "vhost-user.map-errors" : "vhost-user.unmap-errors");
        _log.LogWarning("{Device}: {Request} failed: {Reason}", _device.Description.Name, what, error);
    }

    // ---- message loop -------------------------------------------------------------------------

    private void OnReadable()
    {
        try
        {
            for (int budget = MessagesPerTurn; budget > 0 && !_closed; budget--)
            {
                ReadStatus status = _framer.TryRead();
                if (status == ReadStatus.WouldBlock) return;
                if (status == ReadStatus.Closed)
                {
                    Close("the frontend closed the connection");
                    return;
                }
                Dispatch();
            }
        }
        catch (VhostUserProtocolException ex)
        {
            _counters.Increment("vhost-user.protocol-errors");
            Close($"protocol error: {ex.Message}", LogLevel.Warning);
        }
        catch (PosixException ex)
        {
            _counters.Increment("vhost-user.protocol-errors");
            Close($"socket error: {ex.Message}", LogLevel.Warning);
        }
    }

    private void Dispatch()
    {
        MessageHeader h = _framer.Header;
        List<SafeFileHandle> fds = _framer.Fds;
        RequestSpec? spec = RequestTable.Find(h.Request);
        string name = spec?.Name ?? $"request {h.Request}";
        if (_log.IsEnabled(LogLevel.Trace))
            _log.LogTrace("{Device}: {Request} flags 0x{Flags:x} {Size} bytes {Fds} fds", _device.Description.Name, name, h.Flags, h.Size, fds.Count);
        string? error;
        byte[]? reply = null;
        if (fds.Count > (spec?.MaxFds ?? 0))
            _counters.Increment("vhost-user.unexpected-fds", fds.Count - (spec?.MaxFds ?? 0));
        if (spec is null)
        {
            _counters.Increment("vhost-user.unknown-requests");
            error = RequestTable.DescribeUnsupported(h.Request);
        }
        else if (h.IsReply)
            error = "the message carries the REPLY flag; the frontend sends requests";
        else if (spec.ProtocolBit >= 0 && !Acked(spec.ProtocolBit))
            error = $"needs protocol feature {RequestTable.ProtocolFeatureName(spec.ProtocolBit)}, which was not negotiated";
        else if (h.Size < spec.MinPayload || h.Size > spec.MaxPayload)
            error = spec.MinPayload == spec.MaxPayload
                ? $"takes a {spec.MinPayload}-byte payload, got {h.Size}"
                : $"takes a payload of {spec.MinPayload}..{spec.MaxPayload} bytes, got {h.Size}";
        else if (fds.Count < spec.MinFds || fds.Count > spec.MaxFds)
            error = spec.MinFds == spec.MaxFds
                ? $"takes {spec.MaxFds} fd(s), got {fds.Count} (closed)"
                : $"takes {spec.MinFds}..{spec.MaxFds} fds, got {fds.Count} (closed)";
        else
        {
            Outcome outcome;
            try
            {
                outcome = spec.Handler(this, new Request(h, _framer.Payload, fds));
            }
            catch (Exception ex) when (ex is PosixException or IOException or ArgumentException)
            {
                outcome = Outcome.Fail(ex.Message);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A bug, in vism or in the device it drives: this request fails, the connection and
                // every other device carry on, and the exception is in the log.
                _log.LogError(ex, "{Device}: {Request} failed unexpectedly", _device.Description.Name, name);
                outcome = Outcome.Fail($"internal error: {ex.GetType().Name}: {ex.Message}");
            }
            error = outcome.Error;
            reply = outcome.Reply;
        }
        if (error is not null) ReportError(name, error);
        if (_closed) return;
        if (spec is { HasReply: true })
            _outbox.Send(Message.Build(h.Request, VhostUserConstants.ReplyFlags, error is null ? reply : []));
        else if (h.NeedsReply && Acked(ProtocolFeature.ReplyAck))
            _outbox.Send(Message.BuildU64(h.Request, VhostUserConstants.ReplyFlags, error is null ? 0UL : 1UL));
    }

    private void ReportError(string request, string error)
    {
        _counters.Increment("vhost-user.request-errors");
        LogLevel level = _loggedErrors++ < MaxLoggedErrors ? LogLevel.Warning : LogLevel.Debug;
        _log.Log(level, "{Device}: {Request} refused: {Reason}", _device.Description.Name, request, error);
    }

    // ---- handlers (called from RequestTable) ---------------------------------------------------

    internal Outcome GetFeatures() => Outcome.U64(OfferedFeatures);

    internal Outcome SetFeatures(in Request r)
    {
        U64Payload.TryRead(r.Payload, out ulong f);
        ulong offered = OfferedFeatures;
        if ((f & ~offered) != 0)
            return Outcome.Fail($"features 0x{f & ~offered:x} were not offered (offered 0x{offered:x})");
        ulong deviceBits = f & ~ProtocolFeaturesMask;
        if (_device.Status.HasFlag(DeviceStatus.FeaturesOk) && _device.DriverFeatures != deviceBits)
        {
            if (_started || !_device.Status.HasFlag(DeviceStatus.DriverOk))
                return Outcome.Fail($"features 0x{deviceBits:x} differ from 0x{_device.DriverFeatures:x} accepted before FEATURES_OK; reset first");
            // Stopped, and the driver negotiated something else: it re-initialised the device
            // (QEMU 11.1.3 says nothing else on a guest reset).
            ResetForNewDriver($"SET_FEATURES 0x{deviceBits:x} after a stop, the device runs with 0x{_device.DriverFeatures:x}");
        }
        if (!_device.Status.HasFlag(DeviceStatus.FeaturesOk) && !_device.TrySetDriverFeatures(deviceBits))
            return Outcome.Fail($"the device refused features 0x{deviceBits:x}");
        _features = f;
        if ((f & ProtocolFeaturesMask) == 0)
        {
            // Without VHOST_USER_F_PROTOCOL_FEATURES every ring is enabled at once.
            foreach (Ring ring in _rings) ring.Enabled = true;
            for (int i = 0; i < _rings.Length; i++)
                if (TryRun(i) is { } e) ReportError("SET_FEATURES", e);
        }
        return Outcome.Ok;
    }

    internal Outcome SetOwner() => Outcome.Ok;

    internal Outcome SetMemTable(in Request r)
    {
        if (!MemoryRegionDescriptor.TryReadTable(r.Payload, out MemoryRegionDescriptor[] table, out string? error))
            return Outcome.Fail(error!);
        if (r.Fds.Count != table.Length)
            return Outcome.Fail($"{table.Length} regions need {table.Length} fds, got {r.Fds.Count}");
        var mapped = new List<GuestRegion>(table.Length);
        for (int i = 0; i < table.Length; i++)
        {
            GuestRegion? region = GuestRegion.TryMap(table[i], r.Fds[i], out error);
            if (region is null)
            {
                foreach (GuestRegion m in mapped) m.Dispose();
                return Outcome.Fail($"region {i}: {error}");
            }
            mapped.Add(region);
        }
        return Outcome.From(_memory.TryReplace(mapped)); // the fds are closed by the framer; the mappings stay
    }

    internal Outcome AddMemReg(in Request r)
    {
        var d = MemoryRegionDescriptor.Read(r.Payload[8..]);
        GuestRegion? region = GuestRegion.TryMap(d, r.Fds[0], out string? error);
        if (region is null) return Outcome.Fail(error!);
        error = _memory.TryAdd(region);
        if (error is not null) region.Dispose();
        return Outcome.From(error);
    }

    internal Outcome RemMemReg(in Request r)
    {
        var d = MemoryRegionDescriptor.Read(r.Payload[8..]);
        return Outcome.From(_memory.TryRemove(d.GuestAddress, d.Size));
    }

    internal Outcome SetVringNum(in Request r)
    {
        VringState.TryRead(r.Payload, out VringState s);
        if (RingFor(s.Index, out Ring? ring) is { } e) return Outcome.Fail(e);
        if (ring!.Running) return Outcome.Fail($"ring {s.Index} is running");
        uint max = s.Index < _device.QueueCount ? Math.Min(_device.MaxQueueSize, (uint)32768) : 32768;
        if (s.Num == 0 || s.Num > max || !uint.IsPow2(s.Num))
            return Outcome.Fail($"ring size {s.Num} is not a power of two in 1..{max}");
        ring.Size = (ushort)s.Num;
        return Outcome.Ok;
    }

    internal Outcome SetVringAddr(in Request r)
    {
        VringAddress.TryRead(r.Payload, out VringAddress a);
        if (RingFor(a.Index, out Ring? ring) is { } e) return Outcome.Fail(e);
        if (ring!.Running) return Outcome.Fail($"ring {a.Index} is running");
        if ((a.Flags & ~VhostUserConstants.VringFlagLog) != 0) return Outcome.Fail($"unknown ring flags 0x{a.Flags:x}");
        if (!_memory.TryUserToGuest(a.Descriptors, out ulong desc))
            return Outcome.Fail($"descriptor table at user address 0x{a.Descriptors:x} is outside the memory table");
        if (!_memory.TryUserToGuest(a.Available, out ulong avail))
            return Outcome.Fail($"available ring at user address 0x{a.Available:x} is outside the memory table");
        if (!_memory.TryUserToGuest(a.Used, out ulong used))
            return Outcome.Fail($"used ring at user address 0x{a.Used:x} is outside the memory table");
        var candidate = new RingLayout(desc, avail, used);
        if (CheckLayout(candidate, ring.Size) is { } bad) return Outcome.Fail($"ring {a.Index}: {bad}");
        ring.Layout = candidate;
        return Outcome.Ok;
    }

    internal Outcome SetVringBase(in Request r)
    {
        VringState.TryRead(r.Payload, out VringState s);
        if (RingFor(s.Index, out Ring? ring) is { } e) return Outcome.Fail(e);
        if (ring!.Running) return Outcome.Fail($"ring {s.Index} is running");
        if (s.Num > ushort.MaxValue) return Outcome.Fail($"base {s.Num} does not fit a 16-bit ring index");
        ring.Base = (ushort)s.Num;
        return Outcome.Ok;
    }

    internal Outcome GetVringBase(in Request r)
    {
        VringState.TryRead(r.Payload, out VringState s);
        if (RingFor(s.Index, out Ring? ring) is { } e) return Outcome.Fail(e);
        StopRing((int)s.Index);
        ring!.DropKick();
        Stopped();
        return Outcome.Value(new VringState(s.Index, ring.Base).ToBytes());
    }

    internal Outcome SetVringKick(in Request r)
    {
        if (FileRequest(r, "kick", out uint index, out Ring? ring) is { } e) return Outcome.Fail(e);
        if (r.Fds.Count == 0) return Outcome.Fail("polling rings (no kick fd) are not supported");
        SafeFileHandle fd = r.TakeFd();
        ring!.DropKick();
        try
        {
            Fd.SetNonBlocking(fd);
            ring.Kick = EventFd.Adopt(fd);
            // The queues of per-region vectors never run: their kicks mean nothing and are not watched.
            if (index < (uint)_device.QueueCount)
                ring.KickWatch = _loop.WatchReadable(fd, () => OnKick((int)index));
        }
        catch (PosixException ex)
        {
            ring.DropKick();
            fd.Dispose();
            return Outcome.Fail($"kick fd of ring {index} cannot be watched: {ex.Message}");
        }
        ring.Started = true;
        return Outcome.From(TryRun((int)index));
    }

    internal Outcome SetVringCall(in Request r)
    {
        if (FileRequest(r, "call", out _, out Ring? ring) is { } e) return Outcome.Fail(e);
        ring!.Call?.Dispose();
        ring.Call = null;
        if (r.Fds.Count == 0) return Outcome.Ok;
        SafeFileHandle fd = r.TakeFd();
        ring.Call = EventFd.Adopt(fd);
        Fd.SetNonBlocking(fd);
        return Outcome.Ok;
    }

    internal Outcome SetVringErr(in Request r)
    {
        if (FileRequest(r, "err", out _, out Ring? ring) is { } e) return Outcome.Fail(e);
        ring!.Err?.Dispose();
        ring.Err = r.Fds.Count == 0 ? null : r.TakeFd();
        return Outcome.Ok;
    }

    internal Outcome GetProtocolFeatures() => Outcome.U64(RequestTable.OfferedProtocolFeatures);

    internal Outcome SetProtocolFeatures(in Request r)
    {
        U64Payload.TryRead(r.Payload, out ulong f);
        ulong extra = f & ~RequestTable.OfferedProtocolFeatures;
        if (extra != 0) return Outcome.Fail($"protocol features 0x{extra:x} were not offered");
        _protocolFeatures = f;
        return Outcome.Ok;
    }

    internal Outcome GetQueueNum() => Outcome.U64((ulong)_rings.Length);

    internal Outcome SetVringEnable(in Request r)
    {
        VringState.TryRead(r.Payload, out VringState s);
        if (RingFor(s.Index, out Ring? ring) is { } e) return Outcome.Fail(e);
        if (s.Num > 1) return Outcome.Fail($"enable flag {s.Num} is neither 0 nor 1");
        ring!.Enabled = s.Num == 1;
        if (ring.Enabled) return Outcome.From(TryRun((int)s.Index));
        StopRing((int)s.Index);
        return Outcome.Ok;
    }

    internal Outcome SetBackendReqFd(in Request r)
    {
        SafeFileHandle fd = r.TakeFd();
        if (Syscall.fstat(Fd.Raw(fd), out Stat st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFSOCK)
        {
            fd.Dispose();
            return Outcome.Fail("the backend channel fd is not a socket");
        }
        _backend?.Dispose();
        BackendChannel? channel = null;
        channel = new BackendChannel(UnixSocket.Adopt(fd), _loop, TimeSpan.FromMilliseconds(_options.BackendReplyTimeoutMs),
            reason => OnBackendBroken(channel!, reason));
        _backend = channel;
        return Outcome.Ok;
    }

    internal Outcome GetConfig(in Request r)
    {
        if (!ConfigHeader.TryRead(r.Payload, out ConfigHeader c, out string? error)) return Outcome.Fail(error!);
        var data = new byte[c.Length];
        if (ReadConfig(c.Offset, data) is { } bad) return Outcome.Fail(bad);
        return Outcome.Value(c.Encode(data));
    }

    internal Outcome SetConfig(in Request r)
    {
        if (!ConfigHeader.TryRead(r.Payload, out ConfigHeader c, out string? error)) return Outcome.Fail(error!);
        return _device.TryWriteConfig(c.Offset, r.Payload[ConfigHeader.Size..])
            ? Outcome.Ok
            : Outcome.Fail($"the device refused a {c.Length}-byte config write at {c.Offset} (ISM config space is read-only)");
    }

    internal Outcome GetMaxMemSlots() => Outcome.U64((ulong)_options.MaxMemSlots);

    internal Outcome SetStatus(in Request r)
    {
        U64Payload.TryRead(r.Payload, out ulong v);
        if (v > byte.MaxValue) return Outcome.Fail($"status 0x{v:x} does not fit 8 bits");
        if (v == 0) return ResetDevice("SET_STATUS 0");
        var status = (DeviceStatus)v;
        DeviceStatus cleared = _device.Status & ~status & Lifecycle;
        if (cleared != 0) return Outcome.Fail($"status {status} clears {cleared} without a reset");
        string? error = Advance(status);
        if (error is null && _device.Status.HasFlag(DeviceStatus.DriverOk) && !_started && !RingsPending()) Started();
        DeliverDeferredKicks();
        return Outcome.From(error);
    }

    internal Outcome GetStatus() => Outcome.U64((ulong)_device.Status);

    internal Outcome GetShmemConfig()
    {
        var sizes = new ulong[VhostUserConstants.MaxShmemRegions];
        foreach (SharedMemoryWindow w in _device.SharedMemory) sizes[(byte)w.Id] = w.Length;
        return Outcome.Value(ShmemConfig.Encode(sizes));
    }

    internal Outcome ResetDevice(string why)
    {
        _log.LogDebug("{Device}: {Why}: resetting the device", _device.Description.Name, why);
        Stopped();
        MoveMappingsToStale();
        bool protocolFeatures = _features is not { } f || (f & ProtocolFeaturesMask) != 0;
        foreach (Ring ring in _rings) ring.Reset(enabled: !protocolFeatures);
        _features = null; // the device forgot them; the frontend sends SET_FEATURES before the next start
        _stoppedControl = null;
        _device.Reset();
        return Outcome.Ok;
    }

    /// <summary>
    /// QEMU 11.1.3 sends neither SET_STATUS 0 nor RESET_DEVICE when the guest resets the device (its
    /// "last queue pair" check skips both): the backend only sees SET_VRING_ENABLE 0 and
    /// GET_VRING_BASE, exactly as for a VM pause. A resumed device restarts its controlq where it
    /// stopped; a re-initialised one comes back with other features or a controlq at another base or
    /// address. Then the device is reset here (its regions released; QEMU dropped their mappings),
    /// keeping the features and rings of the new start.
    /// </summary>
    private void ResetForNewDriver(string why)
    {
        _log.LogInformation("{Device}: the driver re-initialised the device ({Why}): resetting it", _device.Description.Name, why);
        _counters.Increment("vhost-user.implicit-resets");
        Stopped();
        MoveMappingsToStale();
        _stoppedControl = null;
        foreach (Ring ring in _rings) ring.Running = false;
        ulong? features = _features;
        _device.Reset();
        if (features is { } f && !_device.TrySetDriverFeatures(f & ~ProtocolFeaturesMask))
            _log.LogWarning("{Device}: the device refused features 0x{Features:x} after the reset", _device.Description.Name, f);
    }

    /// <summary>Stops a running ring (SET_VRING_ENABLE 0, GET_VRING_BASE) and remembers where the
    /// controlq stopped, to tell a resume from a re-initialisation.</summary>
    private void StopRing(int index)
    {
        Ring ring = _rings[index];
        if (!ring.Running) return;
        ring.Base = _device.StopQueue(index);
        ring.Running = false;
        if (index == Virtio.ControlQueue && ring.Layout is { } layout)
            _stoppedControl = new StoppedControl(layout, ring.Size, ring.Base);
    }

    // ---- rings and status ----------------------------------------------------------------------

    private string? RingFor(uint index, out Ring? ring)
    {
        ring = index < (uint)_rings.Length ? _rings[index] : null;
        return ring is null ? $"queue {index} does not exist ({_rings.Length} queues)" : null;
    }

    private string? FileRequest(in Request r, string what, out uint index, out Ring? ring)
    {
        U64Payload.TryRead(r.Payload, out ulong v);
        index = (uint)(v & VhostUserConstants.VringIndexMask);
        ring = null;
        if ((v & ~(VhostUserConstants.VringIndexMask | VhostUserConstants.VringNoFdFlag)) != 0)
            return $"unknown bits in 0x{v:x}";
        bool noFd = (v & VhostUserConstants.VringNoFdFlag) != 0;
        if (noFd && r.Fds.Count > 0) return $"the {what} fd came with the no-fd flag (closed)";
        if (!noFd && r.Fds.Count == 0) return $"no {what} fd and no no-fd flag";
        return RingFor(index, out ring);
    }

    private void OnKick(int index)
    {
        Ring ring = _rings[index];
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
    /// flushed by the device itself, see <see cref="FlushNotifyWrites"/>).</summary>
    private void Kicked(int index)
    {
        // A kick is also the doorbell vism's own frontend rings after a notify store (any kick
        // will do; QEMU never sends a spurious one): the window is scanned now, not at the next poll.
        FlushNotifyWrites();
        _poller?.Activity();
        _device.NotifyQueue(index);
    }

    /// <summary>Delivers the kicks that arrived before their ring ran, once it runs on a device with
    /// DRIVER_OK (each at most once).</summary>
    private void DeliverDeferredKicks()
    {
        if (_closed || !_device.Status.HasFlag(DeviceStatus.DriverOk)) return;
        for (int i = 0; i < _device.QueueCount && i < _rings.Length; i++)
        {
            Ring ring = _rings[i];
            if (!ring.KickPending || !ring.Running) continue;
            ring.KickPending = false;
            Kicked(i);
        }
    }

    /// <summary>Starts ring <paramref name="index"/> on the device once it has everything (size,
    /// addresses, a kick fd, enabled), then delivers kicks that waited for a ring to run. Queues past
    /// the device's own (per-region vectors) only carry call fds and never start.</summary>
    private string? TryRun(int index)
    {
        string? error = StartRing(index);
        DeliverDeferredKicks();
        return error;
    }

    private string? StartRing(int index)
    {
        Ring ring = _rings[index];
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
        if (!_rings[Virtio.ControlQueue].Running || RingsPending()) return null;
        if (!_device.Status.HasFlag(DeviceStatus.DriverOk))
        {
            // The running controlq is the start. QEMU 11.1.3 never sends SET_STATUS with DRIVER_OK
            // for vhost-user-test-device (its "last queue pair" check skips it), and a frontend
            // without STATUS never sends any status at all.
            if (Advance(DeviceStatus.DriverOk) is { } error) return error;
        }
        if (_device.Status.HasFlag(DeviceStatus.DriverOk) && !_started) Started();
        return null;
    }

    /// <summary>A device ring whose kick arrived but that does not run yet (waits for SET_VRING_ENABLE).</summary>
    private bool RingsPending()
    {
        for (int i = 0; i < _device.QueueCount && i < _rings.Length; i++)
            if (_rings[i].Started && !_rings[i].Running) return true;
        return false;
    }

    private string? CheckLayout(RingLayout layout, ushort size)
    {
        if (layout.Descriptors % 16 != 0) return $"descriptor table 0x{layout.Descriptors:x} is not 16-byte aligned";
        if (layout.Available % 2 != 0) return $"available ring 0x{layout.Available:x} is not 2-byte aligned";
        if (layout.Used % 4 != 0) return $"used ring 0x{layout.Used:x} is not 4-byte aligned";
        ulong n = Math.Max(size, (ushort)1);
        if (!_memory.TryTranslate(layout.Descriptors, 16 * n, out _)) return $"descriptor table [0x{layout.Descriptors:x}, +{16 * n}) is not in guest memory";
        if (!_memory.TryTranslate(layout.Available, 6 + 2 * n, out _)) return $"available ring [0x{layout.Available:x}, +{6 + 2 * n}) is not in guest memory";
        if (!_memory.TryTranslate(layout.Used, 6 + 8 * n, out _)) return $"used ring [0x{layout.Used:x}, +{6 + 8 * n}) is not in guest memory";
        return null;
    }

    private string? EnsureFeaturesOk()
    {
        if (_device.Status.HasFlag(DeviceStatus.FeaturesOk)) return null;
        return Advance(DeviceStatus.FeaturesOk);
    }

    /// <summary>Drives the device to <paramref name="target"/> one bit at a time in the order a
    /// driver would (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK), adding the bits the frontend left
    /// out: a frontend may say FEATURES_OK alone (QEMU's first SET_STATUS), or nothing at all.</summary>
    private string? Advance(DeviceStatus target)
    {
        DeviceStatus want = target;
        if (want.HasFlag(DeviceStatus.DriverOk)) want |= DeviceStatus.FeaturesOk;
        if (want.HasFlag(DeviceStatus.FeaturesOk)) want |= DeviceStatus.Driver;
        if (want.HasFlag(DeviceStatus.Driver)) want |= DeviceStatus.Acknowledge;
        foreach (DeviceStatus bit in (ReadOnlySpan<DeviceStatus>)[DeviceStatus.Acknowledge, DeviceStatus.Driver, DeviceStatus.FeaturesOk, DeviceStatus.DriverOk])
        {
            DeviceStatus current = _device.Status;
            if (!want.HasFlag(bit) || current.HasFlag(bit)) continue;
            if (bit == DeviceStatus.FeaturesOk && _features is null) return "FEATURES_OK before SET_FEATURES";
            if (!_device.TrySetStatus(current | bit))
                return $"the device refused status {current | bit} (now {current})";
        }
        DeviceStatus extra = target & (DeviceStatus.Failed | DeviceStatus.DeviceNeedsReset);
        if (extra != 0 && (_device.Status & extra) != extra && !_device.TrySetStatus(_device.Status | extra))
            return $"the device refused status {_device.Status | extra}";
        return null;
    }

    /// <summary>The device runs: share the NOTIFY window and remove mappings left from before.</summary>
    private void Started()
    {
        _started = true;
        if (MapBlocker() is { } blocker)
        {
            if (!_warnedNoShmem)
                _log.LogWarning("{Device}: started without shared memory: {Reason}; regions cannot be mapped", _device.Description.Name, blocker);
            _warnedNoShmem = true;
            return;
        }
        foreach (WindowMapping stale in _transport.TakeStale())
            _ = _backend!.Request(BackendRequest.ShmemUnmap, Payload(stale, writable: false), null, Acked(ProtocolFeature.ReplyAck));
        if (_notifyFd is not null && _notifyMap is not null && !_mappings.ContainsKey((ShmId.Notify, 0)))
        {
            ClearNotifyWindow();
            _ = MapFd(ShmId.Notify, 0, _notifyFd, 0, _notifyMap.Length, writable: true);
        }
        _poller?.Activity();
    }

    /// <summary>GET_VRING_BASE or a reset: the frontend stopped the device.</summary>
    private void Stopped()
    {
        _started = false;
        _poller?.Stop();
    }

    private void ClearNotifyWindow()
    {
        for (ulong at = 0; at < _notifyMap!.Length; at += 1 << 20)
            _notifyMap.Span(at, (int)Math.Min(1UL << 20, _notifyMap.Length - at)).Clear();
    }

    private void MoveMappingsToStale()
    {
        foreach (((ShmId id, ulong offset), ulong length) in _mappings)
            _transport.AddStale(new WindowMapping(id, offset, length));
        _mappings.Clear();
        _generation++;
    }

    private string? ReadConfig(uint offset, Span<byte> data)
    {
        int size = _device.ConfigSize;
        if (offset > (uint)size || (uint)data.Length > (uint)size - offset)
            return $"[{offset}, +{data.Length}) is outside the {size}-byte config space";
        int done = 0;
        while (done < data.Length)
        {
            uint at = offset + (uint)done;
            int width = 8;
            while (width > 1 && (at % (uint)width != 0 || width > data.Length - done)) width >>= 1;
            if (!_device.TryReadConfig(at, data.Slice(done, width)))
                return $"the device refused a {width}-byte config read at {at}";
            done += width;
        }
        return null;
    }

    private void OnBackendBroken(BackendChannel channel, string reason)
    {
        _counters.Increment("vhost-user.backend-channel-errors");
        _log.LogError("{Device}: backend channel broken: {Reason}; regions cannot be mapped until the frontend sends a new one",
            _device.Description.Name, reason);
        if (!ReferenceEquals(_backend, channel)) return;
        _backend = null;
        _loop.Post(channel.Dispose); // not from inside its own callback
    }

    private static ulong NotifyWindowLength(IVirtioDevice device)
    {
        foreach (SharedMemoryWindow w in device.SharedMemory)
            if (w.Id == ShmId.Notify) return w.Length;
        return 0;
    }

    // ---- teardown ------------------------------------------------------------------------------

    /// <summary>Closes the connection and releases everything it holds.</summary>
    public void Close(string reason, LogLevel level = LogLevel.Information)
    {
        if (_closed) return;
        _closed = true;
        _started = false;
        _counters.Increment("vhost-user.disconnects");
        _log.Log(level, "{Device}: frontend disconnected: {Reason}", _device.Description.Name, reason);
        _watch?.Dispose();
        _watch = null;
        _poller?.Dispose();
        MoveMappingsToStale();
        try
        {
            _device.Disconnect();
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "{Device}: the device failed to disconnect", _device.Description.Name);
        }
        _backend?.Dispose();
        _backend = null;
        foreach (Ring ring in _rings) ring.Dispose();
        _memory.Dispose();
        _outbox.Dispose();
        _framer.Dispose();
        _socket.Dispose();
        _notifyMap?.Dispose();
        _notifyFd?.Dispose();
        _transport.OnSessionClosed(this);
    }

    public void Dispose() => Close("the transport stopped");

    private readonly record struct RingLayout(ulong Descriptors, ulong Available, ulong Used);

    private readonly record struct StoppedControl(RingLayout Layout, ushort Size, ushort Base);

    private sealed class Ring : IDisposable
    {
        public ushort Size;
        public RingLayout? Layout;
        public ushort Base;
        public EventFd? Kick;
        public IDisposable? KickWatch;
        public EventFd? Call;
        public SafeFileHandle? Err;
        public bool Started;
        public bool Enabled;
        public bool Running;

        /// <summary>A kick arrived before the ring ran; it is delivered when it runs.</summary>
        public bool KickPending;

        public void DropKick()
        {
            KickWatch?.Dispose();
            KickWatch = null;
            Kick?.Dispose();
            Kick = null;
            Started = false;
            KickPending = false;
        }

        /// <summary>Device reset: the ring stops and forgets its base; call fds stay (QEMU sends new ones on start).</summary>
        public void Reset(bool enabled)
        {
            DropKick();
            Running = false;
            Base = 0;
            Enabled = enabled;
        }

        public void Dispose()
        {
            DropKick();
            Call?.Dispose();
            Call = null;
            Err?.Dispose();
            Err = null;
        }
    }
}
