using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser;

/// <summary>
/// One frontend connection: the handlers of <see cref="RequestTable"/> and the services the device
/// uses (<see cref="ITransportServices"/>). The ring state and what vhost-user leaves to inference
/// live in <see cref="VringSet"/>, the window mappings in <see cref="MappingBook"/>, the NOTIFY
/// window in <see cref="NotifyWindow"/>. Everything runs on the device's loop; the socket is a raw
/// non-blocking fd watched with <see cref="IDeviceLoop.WatchReadable"/>. Closing the session (peer
/// gone, framing error) releases every fd and mapping and disconnects the device.
/// </summary>
internal sealed class VhostUserSession : ITransportServices, IVringOwner, IDisposable
{
    private const ulong ProtocolFeaturesMask = VringSet.ProtocolFeaturesMask;
    private const int MessagesPerTurn = 64;
    private const DeviceStatus Lifecycle = DeviceStatus.Acknowledge | DeviceStatus.Driver | DeviceStatus.FeaturesOk | DeviceStatus.DriverOk;

    private readonly QueueCoverage _coverage;
    private readonly IVirtioDevice _device;
    private readonly VhostUserOptions _options;
    private readonly IDeviceLoop _loop;
    private readonly ILogger _log;
    private readonly IDeviceCounters _counters;
    private readonly VhostUserTransport _transport;
    private readonly UnixSocket _socket;
    private readonly MessageFramer _framer;
    private readonly Outbox _outbox;
    private readonly GuestMemoryTable _memory;
    private readonly VringSet _rings;
    private readonly MappingBook _mappings;
    private readonly NotifyWindow? _notify;
    private IDisposable? _watch;
    private BackendChannel? _backend;
    private ulong _protocolFeatures;
    private bool _started;
    private bool _closed;
    private bool _warnedNoShmem;

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
        _coverage = new QueueCoverage(device.QueueCount, transport.VectorCount);
        _rings = new VringSet(device.QueueCount + transport.VectorCount, device, _memory, this, log, counters);
        _mappings = new MappingBook(transport);
        _notify = NotifyWindow.Create(device, loop, counters, options);
        _watch = loop.WatchReadable(socket.Handle, OnReadable);
        device.Connect(this);
    }

    public bool IsClosed => _closed;

    bool IVringOwner.IsStarted => _started;

    /// <summary>Protocol features the frontend acked.</summary>
    public ulong AckedProtocolFeatures => _protocolFeatures;

    /// <summary>The NOTIFY poller (tests observe it).</summary>
    internal NotifyPoller? Poller => _notify?.Poller;

    /// <summary>The backend channel, when the frontend sent one.</summary>
    internal BackendChannel? Backend => _backend;

    private ulong OfferedFeatures => _device.DeviceFeatures | ProtocolFeaturesMask;

    private bool Acked(int bit) => (_protocolFeatures & (1UL << bit)) != 0;

    // ---- ITransportServices -------------------------------------------------------------------

    /// <inheritdoc />
    public void FlushNotifyWrites()
    {
        if (_notify is not null && _device.SlotsInUse > 0)
            _notify.Poller.Scan();
    }

    public IGuestMemory Memory => _memory;

    public int VectorCount => _transport.VectorCount;

    public bool CanMap => MapBlocker() is null;

    public void SignalQueue(int queueIndex)
    {
        if ((uint)queueIndex >= (uint)_rings.Count || _rings[queueIndex].Call is not { } call || !call.Signal())
            _counters.Increment("vhost-user.signals-dropped");
    }

    public void SignalVector(int vector)
    {
        if ((uint)vector >= (uint)_transport.VectorCount)
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
        string? error = MapBlocker() ?? TransportRules.CheckMap(shmId, WindowLength(shmId), windowOffset, length, block, _mappings.In(shmId));
        if (error is null)
            error = await MapFd(shmId, windowOffset, block.Handle, block.Offset, length, writable);
        else
            ReportMapError("SHMEM_MAP", error);
        return error;
    }

    public async ValueTask<string?> UnmapAsync(ShmId shmId, ulong windowOffset, ulong length)
    {
        var mapping = new WindowMapping(shmId, windowOffset, length);
        if (_closed || _mappings.IsStale(mapping))
            return null; // the frontend is gone or the mapping is already queued for removal at the next start
        if (!_mappings.TryRemove(mapping))
        {
            string missing = $"nothing is mapped at {shmId} +0x{windowOffset:x} with length 0x{length:x}";
            ReportMapError("SHMEM_UNMAP", missing);
            return missing;
        }
        if (MapBlocker() is not null)
        {
            // Not started: QEMU 11.1.3 must not see SHMEM_* now. QEMU drops mappings on a device reset;
            // after a pause it keeps them, so the removal is sent at the next start.
            _mappings.MarkStale(mapping);
            return null;
        }
        string? error = await _backend!.Request(BackendRequest.ShmemUnmap, Payload(mapping, writable: false), null, Acked(ProtocolFeature.ReplyAck));
        if (error is not null)
        {
            _mappings.MarkStale(mapping);
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

    private ulong? WindowLength(ShmId shmId)
    {
        ulong? length = null;
        foreach (SharedMemoryWindow w in _device.SharedMemory)
            if (w.Id == shmId) length = w.Length;
        return length;
    }

    private async Task<string?> MapFd(ShmId shmId, ulong offset, SafeFileHandle fd, ulong fdOffset, ulong length, bool writable)
    {
        int generation = _mappings.Reserve(shmId, offset, length); // held while the reply is outstanding
        string? error = await _backend!.Request(BackendRequest.ShmemMap,
            new ShmemMapPayload((byte)shmId, fdOffset, offset, length, writable ? VhostUserConstants.MapFlagReadWrite : 0).ToBytes(),
            fd, Acked(ProtocolFeature.ReplyAck));
        if (error is not null)
        {
            _mappings.Release(generation, shmId, offset, length);
            ReportMapError("SHMEM_MAP", error);
        }
        else if (shmId == ShmId.Regions)
        {
            _notify?.Poller.Activity();
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
        string? error = null;
        Refusal? refused = null;
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
                outcome = spec.Handler(this, new Request(h, spec.Name, _framer.Payload, fds));
            }
            catch (Exception ex) when (ex is PosixException or IOException or ArgumentException)
            {
                outcome = new(RequestTable.Refusal(spec.Name, ex.Message), null);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A bug, in vism or in the device it drives: this request fails, the connection and
                // every other device carry on, and the exception is in the log.
                _log.LogError(ex, "{Device}: {Request} failed unexpectedly", _device.Description.Name, name);
                outcome = new(RequestTable.Refusal(spec.Name, $"internal error: {ex.GetType().Name}: {ex.Message}"), null);
            }
            refused = outcome.Refused;
            reply = outcome.Reply;
        }
        if (error is not null) refused = RequestTable.Refusal(spec?.Name ?? "UNKNOWN", error);
        if (refused is { } refusal) Report(name, refusal);
        if (_coverage.Observe((FrontendRequest)h.Request, _framer.Payload) is string missing)
        {
            _counters.Increment("vhost-user.queues-missing");
            _log.LogWarning("{Device}: {Problem}", _device.Description.Name, missing);
        }
        if (_closed) return;
        if (spec is { HasReply: true })
            _outbox.Send(Message.Build(h.Request, VhostUserConstants.ReplyFlags, refused is null ? reply : []));
        else if (h.NeedsReply && Acked(ProtocolFeature.ReplyAck))
            _outbox.Send(Message.BuildU64(h.Request, VhostUserConstants.ReplyFlags, refused is null ? 0UL : 1UL));
    }

    /// <summary>Counts a refused request in <c>vhost-user.request-errors</c> and its refusal's
    /// counter (<c>vhost-user.refused.REQUEST</c>), and logs it rate limited per request (<see cref="RateLimitedLog"/>).</summary>
    private void Report(string request, Refusal refusal)
    {
        _counters.Increment("vhost-user.request-errors");
        RateLimitedLog.Count(_counters, _log, LogLevel.Warning, refusal.Counter, "{Device}: {Request} refused: {Reason}",
            _device.Description.Name, request, refusal.Detail);
    }

    // ---- handlers (called from RequestTable) ---------------------------------------------------
    // RequestTable checked the payload size and fd count of each request; the handlers still check
    // every decode, so a row changed in the table cannot make a handler read garbage.

    internal Outcome GetFeatures() => Outcome.U64(OfferedFeatures);

    internal Outcome SetFeatures(in Request r)
    {
        if (!U64Payload.TryRead(r.Payload, out ulong f)) return r.Malformed("u64");
        ulong offered = OfferedFeatures;
        if ((f & ~offered) != 0)
            return r.Refuse($"features 0x{f & ~offered:x} were not offered (offered 0x{offered:x})");
        ulong deviceBits = f & ~ProtocolFeaturesMask;
        if (_device.Status.HasFlag(DeviceStatus.FeaturesOk) && _device.DriverFeatures != deviceBits)
        {
            if (_started || !_device.Status.HasFlag(DeviceStatus.DriverOk))
                return r.Refuse($"features 0x{deviceBits:x} differ from 0x{_device.DriverFeatures:x} accepted before FEATURES_OK; reset first");
            // Stopped, and the driver negotiated something else: it re-initialised the device
            // (QEMU 11.1.3 says nothing else on a guest reset).
            _rings.ResetForNewDriver($"SET_FEATURES 0x{deviceBits:x} after a stop, the device runs with 0x{_device.DriverFeatures:x}");
        }
        if (!_device.Status.HasFlag(DeviceStatus.FeaturesOk) && !_device.TrySetDriverFeatures(deviceBits))
            return r.Refuse($"the device refused features 0x{deviceBits:x}");
        _rings.Features = f;
        if ((f & ProtocolFeaturesMask) == 0)
            foreach (string e in _rings.EnableAll()) Report(r.Name, RequestTable.Refusal(r.Name, e));
        return Outcome.Ok;
    }

    internal Outcome SetOwner() => Outcome.Ok;

    internal Outcome SetMemTable(in Request r)
    {
        if (!MemoryRegionDescriptor.TryReadTable(r.Payload, out MemoryRegionDescriptor[] table, out string? error))
            return r.Refuse(error!);
        if (r.Fds.Count != table.Length)
            return r.Refuse($"{table.Length} regions need {table.Length} fds, got {r.Fds.Count}");
        var mapped = new List<GuestRegion>(table.Length);
        for (int i = 0; i < table.Length; i++)
        {
            GuestRegion? region = GuestRegion.TryMap(table[i], r.Fds[i], out error);
            if (region is null)
            {
                foreach (GuestRegion m in mapped) m.Dispose();
                return r.Refuse($"region {i}: {error}");
            }
            mapped.Add(region);
        }
        return r.RefuseIf(_memory.TryReplace(mapped)); // the fds are closed by the framer; the mappings stay
    }

    internal Outcome AddMemReg(in Request r)
    {
        if (!MemoryRegionDescriptor.TryReadSingle(r.Payload, out MemoryRegionDescriptor d)) return r.Malformed("memory region");
        if (r.Fds.Count != 1) return r.Refuse($"takes 1 fd, got {r.Fds.Count}");
        GuestRegion? region = GuestRegion.TryMap(d, r.Fds[0], out string? error);
        if (region is null) return r.Refuse(error!);
        error = _memory.TryAdd(region);
        if (error is not null) region.Dispose();
        return r.RefuseIf(error);
    }

    internal Outcome RemMemReg(in Request r)
    {
        if (!MemoryRegionDescriptor.TryReadSingle(r.Payload, out MemoryRegionDescriptor d)) return r.Malformed("memory region");
        return r.RefuseIf(_memory.TryRemove(d.GuestAddress, d.Size));
    }

    internal Outcome SetVringNum(in Request r)
    {
        if (!VringState.TryRead(r.Payload, out VringState s)) return r.Malformed("vring state");
        if (_rings.Find(s.Index, out Vring? ring) is { } e) return r.Refuse(e);
        if (ring!.Running) return r.Refuse($"ring {s.Index} is running");
        uint max = s.Index < _device.QueueCount ? Math.Min(_device.MaxQueueSize, (uint)32768) : 32768;
        if (s.Num == 0 || s.Num > max || !uint.IsPow2(s.Num))
            return r.Refuse($"ring size {s.Num} is not a power of two in 1..{max}");
        ring.Size = (ushort)s.Num;
        return Outcome.Ok;
    }

    /// <summary>A ring address no memory region holds: almost always guest RAM QEMU did not share.</summary>
    private string OutsideMemory(string what, ulong address) =>
        $"{what} at user address 0x{address:x} is outside the memory table "
        + (_memory.Count == 0 ? "(the frontend shared no guest memory at all)" : $"({_memory.Count} region(s) shared)")
        + ". Likely cause: the guest RAM is not shared memory, so QEMU could not pass it to vism; start QEMU with "
        + "-object memory-backend-memfd,id=mem,size=<RAM size>,share=on -machine memory-backend=mem";

    internal Outcome SetVringAddr(in Request r)
    {
        if (!VringAddress.TryRead(r.Payload, out VringAddress a)) return r.Malformed("vring address");
        if (_rings.Find(a.Index, out Vring? ring) is { } e) return r.Refuse(e);
        if (ring!.Running) return r.Refuse($"ring {a.Index} is running");
        if ((a.Flags & ~VhostUserConstants.VringFlagLog) != 0) return r.Refuse($"unknown ring flags 0x{a.Flags:x}");
        if (!_memory.TryUserToGuest(a.Descriptors, out ulong desc))
            return r.Refuse(OutsideMemory("descriptor table", a.Descriptors));
        if (!_memory.TryUserToGuest(a.Available, out ulong avail))
            return r.Refuse(OutsideMemory("available ring", a.Available));
        if (!_memory.TryUserToGuest(a.Used, out ulong used))
            return r.Refuse(OutsideMemory("used ring", a.Used));
        var candidate = new RingLayout(desc, avail, used);
        if (_rings.CheckLayout(candidate, ring.Size) is { } bad) return r.Refuse($"ring {a.Index}: {bad}");
        ring.Layout = candidate;
        return Outcome.Ok;
    }

    internal Outcome SetVringBase(in Request r)
    {
        if (!VringState.TryRead(r.Payload, out VringState s)) return r.Malformed("vring state");
        if (_rings.Find(s.Index, out Vring? ring) is { } e) return r.Refuse(e);
        if (ring!.Running) return r.Refuse($"ring {s.Index} is running");
        if (s.Num > ushort.MaxValue) return r.Refuse($"base {s.Num} does not fit a 16-bit ring index");
        ring.Base = (ushort)s.Num;
        return Outcome.Ok;
    }

    internal Outcome GetVringBase(in Request r)
    {
        if (!VringState.TryRead(r.Payload, out VringState s)) return r.Malformed("vring state");
        if (_rings.Find(s.Index, out Vring? ring) is { } e) return r.Refuse(e);
        _rings.Stop((int)s.Index);
        ring!.DropKick();
        Stopped();
        return Outcome.Value(new VringState(s.Index, ring.Base).ToBytes());
    }

    internal Outcome SetVringKick(in Request r)
    {
        if (FileRequest(r, "kick", out uint index, out Vring? ring) is { } e) return r.Refuse(e);
        if (r.Fds.Count == 0) return r.Refuse("polling rings (no kick fd) are not supported");
        SafeFileHandle fd = r.TakeFd();
        ring!.DropKick();
        try
        {
            Fd.SetNonBlocking(fd);
            ring.Kick = EventFd.Adopt(fd);
            // The queues of per-region vectors never run: their kicks mean nothing and are not watched.
            if (index < (uint)_device.QueueCount)
                ring.KickWatch = _loop.WatchReadable(fd, () => _rings.OnKick((int)index));
        }
        catch (PosixException ex)
        {
            ring.DropKick();
            fd.Dispose();
            return r.Refuse($"kick fd of ring {index} cannot be watched: {ex.Message}");
        }
        ring.Started = true;
        return r.RefuseIf(_rings.TryRun((int)index));
    }

    internal Outcome SetVringCall(in Request r)
    {
        if (FileRequest(r, "call", out _, out Vring? ring) is { } e) return r.Refuse(e);
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
        if (FileRequest(r, "err", out _, out Vring? ring) is { } e) return r.Refuse(e);
        ring!.Err?.Dispose();
        ring.Err = r.Fds.Count == 0 ? null : r.TakeFd();
        return Outcome.Ok;
    }

    internal Outcome GetProtocolFeatures() => Outcome.U64(RequestTable.OfferedProtocolFeatures);

    internal Outcome SetProtocolFeatures(in Request r)
    {
        if (!U64Payload.TryRead(r.Payload, out ulong f)) return r.Malformed("u64");
        ulong extra = f & ~RequestTable.OfferedProtocolFeatures;
        if (extra != 0) return r.Refuse($"protocol features 0x{extra:x} were not offered");
        _protocolFeatures = f;
        return Outcome.Ok;
    }

    internal Outcome GetQueueNum() => Outcome.U64((ulong)_rings.Count);

    internal Outcome SetVringEnable(in Request r)
    {
        if (!VringState.TryRead(r.Payload, out VringState s)) return r.Malformed("vring state");
        if (_rings.Find(s.Index, out Vring? ring) is { } e) return r.Refuse(e);
        if (s.Num > 1) return r.Refuse($"enable flag {s.Num} is neither 0 nor 1");
        ring!.Enabled = s.Num == 1;
        if (ring.Enabled) return r.RefuseIf(_rings.TryRun((int)s.Index));
        _rings.Stop((int)s.Index);
        return Outcome.Ok;
    }

    internal Outcome SetBackendReqFd(in Request r)
    {
        if (r.Fds.Count != 1) return r.Refuse($"takes 1 fd, got {r.Fds.Count}");
        SafeFileHandle fd = r.TakeFd();
        if (Syscall.fstat(Fd.Raw(fd), out Stat st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFSOCK)
        {
            fd.Dispose();
            return r.Refuse("the backend channel fd is not a socket");
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
        if (!ConfigHeader.TryRead(r.Payload, out ConfigHeader c, out string? error)) return r.Refuse(error!);
        var data = new byte[c.Length];
        if (ReadConfig(c.Offset, data) is { } bad) return r.Refuse(bad);
        return Outcome.Value(c.Encode(data));
    }

    internal Outcome SetConfig(in Request r)
    {
        if (!ConfigHeader.TryRead(r.Payload, out ConfigHeader c, out string? error)) return r.Refuse(error!);
        return _device.TryWriteConfig(c.Offset, r.Payload[ConfigHeader.Size..])
            ? Outcome.Ok
            : r.Refuse($"the device refused a {c.Length}-byte config write at {c.Offset} (ISM config space is read-only)");
    }

    internal Outcome GetMaxMemSlots() => Outcome.U64((ulong)_options.MaxMemSlots);

    internal Outcome SetStatus(in Request r)
    {
        if (!U64Payload.TryRead(r.Payload, out ulong v)) return r.Malformed("u64");
        if (v > byte.MaxValue) return r.Refuse($"status 0x{v:x} does not fit 8 bits");
        if (v == 0) return ResetDevice("SET_STATUS 0");
        var status = (DeviceStatus)v;
        DeviceStatus cleared = _device.Status & ~status & Lifecycle;
        if (cleared != 0) return r.Refuse($"status {status} clears {cleared} without a reset");
        string? error = _rings.Advance(status);
        if (error is null && _device.Status.HasFlag(DeviceStatus.DriverOk) && !_started && !_rings.Pending) Started();
        _rings.DeliverDeferredKicks();
        return r.RefuseIf(error);
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
        ((IVringOwner)this).OnStopping();
        _rings.ResetAll();
        _device.Reset();
        return Outcome.Ok;
    }

    private string? FileRequest(in Request r, string what, out uint index, out Vring? ring)
    {
        index = 0;
        ring = null;
        if (!U64Payload.TryRead(r.Payload, out ulong v)) return "malformed u64 payload";
        index = (uint)(v & VhostUserConstants.VringIndexMask);
        if ((v & ~(VhostUserConstants.VringIndexMask | VhostUserConstants.VringNoFdFlag)) != 0)
            return $"unknown bits in 0x{v:x}";
        bool noFd = (v & VhostUserConstants.VringNoFdFlag) != 0;
        if (noFd && r.Fds.Count > 0) return $"the {what} fd came with the no-fd flag (closed)";
        if (!noFd && r.Fds.Count == 0) return $"no {what} fd and no no-fd flag";
        return _rings.Find(index, out ring);
    }

    // ---- start and stop ------------------------------------------------------------------------

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
        foreach (WindowMapping stale in _mappings.TakeStale())
            _ = _backend!.Request(BackendRequest.ShmemUnmap, Payload(stale, writable: false), null, Acked(ProtocolFeature.ReplyAck));
        if (_notify is not null && !_mappings.Contains(ShmId.Notify, 0))
        {
            _notify.Clear();
            _ = MapFd(ShmId.Notify, 0, _notify.Fd, 0, _notify.Length, writable: true);
        }
        _notify?.Poller.Activity();
    }

    /// <summary>GET_VRING_BASE or a reset: the frontend stopped the device.</summary>
    private void Stopped()
    {
        _started = false;
        _notify?.Poller.Stop();
    }

    void IVringOwner.OnStopping()
    {
        Stopped();
        _mappings.MoveAllToStale();
    }

    void IVringOwner.OnRunning() => Started();

    /// <summary>A kick is also the doorbell vism's own frontend rings after a notify store (any kick
    /// will do; QEMU sends none of its own): the window is scanned now, not at the next poll. A kick
    /// whose scan found a written slot was such a doorbell: the write is routed, and the poller keeps
    /// its pace (a driver that rings the doorbell needs no fast polling). Any other kick (a request)
    /// makes the poller fast again, for notifies that may follow it.</summary>
    void IVringOwner.OnKick()
    {
        if (_notify is null) return;
        int hits = _device.SlotsInUse > 0 ? _notify.Poller.Scan() : 0;
        if (hits == 0) _notify.Poller.Activity();
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
        _notify?.StopPolling();
        _mappings.MoveAllToStale();
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
        _rings.Dispose();
        _memory.Dispose();
        _outbox.Dispose();
        _framer.Dispose();
        _socket.Dispose();
        _notify?.Dispose();
        _transport.OnSessionClosed(this);
    }

    public void Dispose() => Close("the transport stopped");
}
