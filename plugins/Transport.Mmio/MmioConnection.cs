using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;
using Vism.Mmio;

namespace Vism.Transport.Mmio;

/// <summary>
/// One VMM connected over the socket: reads its messages on the device's loop (raw non-blocking
/// descriptor, never a .NET Socket), answers them through the <see cref="MmioSession"/>, and is the
/// session's <see cref="IMmioVmm"/> (guest RAM from SET_MEM_TABLE, interrupt eventfds from
/// SET_IRQ_FD, MAP/UNMAP requests to the VMM), and watches the NOTIFY doorbells of SET_NOTIFY_FD
/// on the loop. Any protocol violation that breaks the framing ends
/// the connection; everything else gets an error status.
/// </summary>
internal sealed class MmioConnection : IMmioVmm, IDisposable
{
    private const int MessagesPerTurn = 64;

    private readonly UnixSocket _socket;
    private readonly IDeviceLoop _loop;
    private readonly IVirtioDevice _device;
    private readonly MmioOptions _options;
    private readonly IDeviceCounters _counters;
    private readonly ILogger _log;
    private readonly Action<MmioConnection> _onClosed;
    private readonly MmioSession _session;
    private readonly WiredEventFd?[] _lines;
    private readonly Dictionary<ulong, Doorbell> _doorbells = [];
    private readonly Dictionary<int, WiredEventFd> _queueCalls = []; // SET_QUEUE_CALL_FD, by queue index
    private bool _fdsLost; // the message being read lost its descriptors (MSG_CTRUNC)
    private readonly Dictionary<uint, PendingRequest> _pending = [];
    private readonly List<SafeFileHandle> _fds = [];
    private readonly List<byte[]> _outbox = [];
    private readonly byte[] _header = new byte[MmioHeader.Length];
    private byte[] _payload = [];
    private int _headerGot;
    private int _payloadGot;
    private MmioHeader _current;
    private MmioGuestMemory _memory = MmioGuestMemory.Empty;
    private IDisposable? _watch;
    private bool _helloDone;
    private bool _broken;
    private bool _closed;
    private uint _nextId;

    public MmioConnection(UnixSocket socket, IVirtioDevice device, MmioOptions options, IDeviceCounters counters,
        ILogger log, Action<MmioConnection> onClosed)
    {
        _socket = socket;
        _device = device;
        _loop = device.Loop;
        _options = options;
        _counters = counters;
        _log = log;
        _onClosed = onClosed;
        _lines = new WiredEventFd?[1 + options.Vectors];
        _session = new MmioSession(device, this, counters, log);
    }

    /// <summary>The session (for tests and diagnostics).</summary>
    public MmioSession Session => _session;

    /// <summary>Whether the connection has ended.</summary>
    public bool IsClosed => _closed;

    private string Name => _device.Description.Name;

    public void Start() => _watch = _loop.WatchReadable(_socket.Handle, OnReadable);

    // ---- IMmioVmm ----------------------------------------------------------------------------

    public IGuestMemory Memory => _memory;

    public int VectorCount => _options.Vectors;

    public void RaiseInterrupt() => Raise(MmioProtocol.StandardIrqLine);

    public void RaiseVector(int vector) => Raise(1 + (uint)vector);

    public bool SignalQueueCall(int queue)
    {
        if (!_queueCalls.TryGetValue(queue, out WiredEventFd? call)) return false;
        if (!call.Fd.Signal()) _counters.Increment("mmio.queue-call.dropped");
        return true;
    }

    public ValueTask<string?> MapAsync(WindowMapping mapping, SafeHandle fd) =>
        Request(MmioMessageType.Map, mapping.Encode(), fd);

    public ValueTask<string?> UnmapAsync(ShmId id, ulong shmOffset, ulong length) =>
        Request(MmioMessageType.Unmap, new WindowMapping(id, false, shmOffset, 0, length).Encode(), null);

    private void Raise(uint line)
    {
        EventFd? fd = line < (uint)_lines.Length ? _lines[line]?.Fd : null;
        if (fd is null || !fd.Signal())
            _counters.Increment("mmio.irq.dropped");
    }

    private ValueTask<string?> Request(MmioMessageType type, byte[] payload, SafeHandle? fd)
    {
        if (_closed || _broken) return ValueTask.FromResult<string?>("the VMM is disconnected");
        uint id = ++_nextId;
        var pending = new PendingRequest(type);
        _pending[id] = pending;
        int ms = _options.MapTimeoutMs;
        pending.Timer = _loop.Schedule(TimeSpan.FromMilliseconds(ms), () =>
        {
            if (_pending.ContainsKey(id)) Close($"the VMM did not answer {type} request {id} within {ms} ms");
        });
        Send(MmioFrame.Build(type, MmioMessageFlags.None, id, payload), fd);
        return new ValueTask<string?>(pending.Completion.Task);
    }

    // ---- receiving ---------------------------------------------------------------------------

    private void OnReadable()
    {
        for (int budget = MessagesPerTurn; budget > 0 && !_closed; budget--)
        {
            int n;
            try
            {
                bool truncated;
                n = _headerGot < MmioHeader.Length
                    ? _socket.Receive(_header.AsSpan(_headerGot), _fds, out truncated)
                    : _socket.Receive(_payload.AsSpan(_payloadGot), _fds, out truncated);
                // Descriptors ride on a message's first byte: the lost ones were this message's.
                _fdsLost |= truncated;
            }
            catch (PosixException ex)
            {
                Close($"socket error: {ex.Message}");
                return;
            }
            if (n == 0)
            {
                Close(_headerGot == 0 ? "the VMM closed the connection" : "the VMM closed the connection in the middle of a message");
                return;
            }
            if (n < 0) return; // nothing more for now
            if (_headerGot < MmioHeader.Length)
            {
                _headerGot += n;
                if (_headerGot < MmioHeader.Length) continue;
                _current = MmioHeader.Read(_header);
                if (_current.Size > MmioProtocol.MaxPayload)
                {
                    RejectAndClose(MmioStatus.BadMessage, $"a {_current.Type} message announces {_current.Size} payload bytes; the limit is {MmioProtocol.MaxPayload}");
                    return;
                }
                _payload = _current.Size == 0 ? [] : new byte[_current.Size];
                _payloadGot = 0;
            }
            else
            {
                _payloadGot += n;
            }
            if (_payloadGot < _payload.Length) continue;
            MmioHeader header = _current;
            byte[] payload = _payload;
            _headerGot = 0;
            _payload = [];
            SafeFileHandle[] fds = [.. _fds];
            _fds.Clear();
            bool lost = _fdsLost;
            _fdsLost = false;
            try
            {
                if (lost) RefuseLostDescriptors(header, fds.Length);
                else Dispatch(header, payload, fds);
            }
            finally
            {
                foreach (SafeFileHandle fd in fds) fd.Dispose(); // adopted ones were replaced by duplicates
            }
            // Replies go out only now: when the VMM reads one, the descriptors it sent are closed.
            FlushReplies();
            if (_broken) Close("sending to the VMM failed");
        }
    }

    /// <summary>A message whose descriptors the kernel could not hand over (MSG_CTRUNC): it is not
    /// acted on (a SET_IRQ_FD without its descriptor would mean "disconnect the line"), and the
    /// connection goes on. A full buffer means the VMM sent more than a message may carry
    /// (BAD_FD); fewer means this process could not install them, out of descriptors (FAILED).</summary>
    private void RefuseLostDescriptors(MmioHeader h, int arrived)
    {
        if (!_helloDone)
        {
            RejectAndClose(MmioStatus.BadFd, "the first message carries descriptors that could not be received");
            return;
        }
        bool excess = arrived >= UnixSocket.MaxFds;
        string reason = excess
            ? $"more than {UnixSocket.MaxFds} descriptors (the excess was dropped by the kernel); not acted on"
            : "its descriptors could not be received: this process is out of descriptors; not acted on";
        Refuse(h, excess ? MmioStatus.BadFd : MmioStatus.Failed, reason, reply: !h.IsReply);
    }

    private void Dispatch(MmioHeader h, byte[] p, SafeFileHandle[] fds)
    {
        if (h.IsReply)
        {
            if (fds.Length > 0) Refuse(h, MmioStatus.BadFd, $"{fds.Length} descriptors on a reply (closed)", reply: false);
            CompleteRequest(h);
            return;
        }
        if ((h.Flags & ~(MmioMessageFlags.Reply | MmioMessageFlags.NeedReply)) != 0)
        {
            // docs/mmio-protocol.md: undefined flag bits are BAD_MESSAGE, and the request is not acted on.
            if (_helloDone) Refuse(h, MmioStatus.BadMessage, $"undefined flag bits 0x{(ushort)h.Flags:x4}");
            else RejectAndClose(MmioStatus.BadMessage, $"the first message carries undefined flag bits 0x{(ushort)h.Flags:x4}");
            return;
        }
        if (!_helloDone)
        {
            if (h.Type == MmioMessageType.Hello) OnHello(h, p, fds);
            else RejectAndClose(MmioStatus.HandshakeRequired, $"the first message must be HELLO, not {h.Type}");
            return;
        }
        bool takesFds = h.Type is MmioMessageType.SetMemTable or MmioMessageType.SetIrqFd or MmioMessageType.SetNotifyFd or MmioMessageType.SetQueueCallFd;
        if (fds.Length > 0 && !takesFds)
        {
            Refuse(h, MmioStatus.BadFd, $"{fds.Length} descriptors on {h.Type}, which takes none (closed)");
            return;
        }
        switch (h.Type)
        {
            case MmioMessageType.Hello: Refuse(h, MmioStatus.HandshakeRequired, "HELLO was already done"); break;
            case MmioMessageType.Read: OnRead(h, p); break;
            case MmioMessageType.Write: OnWrite(h, p); break;
            case MmioMessageType.Notify: OnNotify(h, p); break;
            case MmioMessageType.SetMemTable: OnSetMemTable(h, p, fds); break;
            case MmioMessageType.SetIrqFd: OnSetIrqFd(h, p, fds); break;
            case MmioMessageType.SetShmBase: OnSetShmBase(h, p); break;
            case MmioMessageType.SetNotifyFd: OnSetNotifyFd(h, p, fds); break;
            case MmioMessageType.SetQueueCallFd: OnSetQueueCallFd(h, p, fds); break;
            default: Refuse(h, MmioStatus.UnknownType, $"unknown message type {(ushort)h.Type}"); break;
        }
    }

    private void OnHello(MmioHeader h, byte[] p, SafeFileHandle[] fds)
    {
        var ours = new HelloReply(MmioProtocol.Magic, MmioProtocol.Version, _device.DeviceId, _session.Registers.WindowSize,
            (uint)_options.Vectors, [.. _device.SharedMemory]);
        if (!HelloRequest.TryDecode(p, out HelloRequest hello) || hello.Magic != MmioProtocol.Magic)
        {
            RejectAndClose(MmioStatus.VersionMismatch, "HELLO is malformed or lacks the vism MMIO magic: the peer does not speak this protocol");
            return;
        }
        if (hello.Version != MmioProtocol.Version)
        {
            _counters.Increment("mmio.vmm.version_mismatch");
            _log.LogError("{Device}: the VMM speaks MMIO protocol version {Theirs}; this device speaks {Ours}; connection refused",
                Name, hello.Version, MmioProtocol.Version);
            Reply(h, MmioStatus.VersionMismatch, ours.Encode());
            FlushReplies();
            Close($"protocol version mismatch (VMM {hello.Version}, device {MmioProtocol.Version})");
            return;
        }
        if (fds.Length > 0)
        {
            RejectAndClose(MmioStatus.BadFd, "HELLO carries no descriptors");
            return;
        }
        _helloDone = true;
        Reply(h, MmioStatus.Ok, ours.Encode());
        _session.Attach();
        _log.LogInformation("{Device}: VMM attached (MMIO protocol {Version}, window 0x{Window:x}, {Vectors} vectors)",
            Name, MmioProtocol.Version, ours.WindowSize, _options.Vectors);
    }

    private void OnRead(MmioHeader h, byte[] p)
    {
        if (!RegisterAccess.TryDecode(p, out RegisterAccess a))
        {
            Refuse(h, MmioStatus.BadMessage, $"READ payload of {p.Length} bytes (expected {RegisterAccess.Size})");
            return;
        }
        MmioAccessResult r = _session.Read(a.Offset, Width(a.Width), out uint value);
        Reply(h, r == MmioAccessResult.Ok ? MmioStatus.Ok : MmioStatus.BadAccess, ReadReply.Encode(value));
    }

    private void OnWrite(MmioHeader h, byte[] p)
    {
        if (!RegisterAccess.TryDecode(p, out RegisterAccess a))
        {
            Refuse(h, MmioStatus.BadMessage, $"WRITE payload of {p.Length} bytes (expected {RegisterAccess.Size})");
            return;
        }
        int width = Width(a.Width);
        uint value = width is > 0 and < 4 ? (uint)(a.Value & ((1UL << (8 * width)) - 1)) : (uint)a.Value;
        MmioAccessResult r = _session.Write(a.Offset, width, value);
        if (WantsReply(h)) Reply(h, r == MmioAccessResult.Ok ? MmioStatus.Ok : MmioStatus.BadAccess);
    }

    private void OnNotify(MmioHeader h, byte[] p)
    {
        if (!NotifyWrite.TryDecode(p, out NotifyWrite n))
        {
            Refuse(h, MmioStatus.BadMessage, $"NOTIFY payload of {p.Length} bytes (expected {NotifyWrite.Size})");
            return;
        }
        MmioAccessResult r = _session.Notify(n.Offset, Width(n.Width));
        if (WantsReply(h)) Reply(h, r == MmioAccessResult.Ok ? MmioStatus.Ok : MmioStatus.BadAccess);
    }

    private void OnSetMemTable(MmioHeader h, byte[] p, SafeFileHandle[] fds)
    {
        if (!SetMemTable.TryDecode(p, out MemoryRegion[] table))
        {
            Refuse(h, MmioStatus.BadMessage, $"SET_MEM_TABLE payload of {p.Length} bytes is malformed (1..{MmioProtocol.MaxMemoryRegions} regions)");
            return;
        }
        if (fds.Length != table.Length)
        {
            Refuse(h, MmioStatus.BadFd, $"SET_MEM_TABLE lists {table.Length} regions but carries {fds.Length} descriptors");
            return;
        }
        string? failure = MmioGuestMemory.TryCreate(table, fds, out MmioGuestMemory? memory);
        if (failure is not null)
        {
            Refuse(h, MmioStatus.BadMemory, $"SET_MEM_TABLE refused: {failure}");
            return;
        }
        MmioGuestMemory old = _memory;
        _memory = memory!;
        old.Dispose();
        _log.LogInformation("{Device}: guest RAM is {Count} regions", Name, table.Length);
        foreach (string? risk in _memory.ShrinkRisks.Where(r => r is not null).Distinct())
            _log.LogWarning("{Device}: guest RAM the VMM can shrink ({Risk}): the rings are accessed with fault-safe copies", Name, risk);
        Reply(h, MmioStatus.Ok);
    }

    private void OnSetIrqFd(MmioHeader h, byte[] p, SafeFileHandle[] fds)
    {
        if (!SetIrqFd.TryDecode(p, out SetIrqFd req))
        {
            Refuse(h, MmioStatus.BadMessage, $"SET_IRQ_FD payload of {p.Length} bytes (expected {SetIrqFd.Size})");
            return;
        }
        if (req.Line >= (uint)_lines.Length)
        {
            Refuse(h, MmioStatus.BadRange, $"interrupt line {req.Line} does not exist (0 and 1..{_options.Vectors})");
            return;
        }
        if (!TryAdoptLine(h, fds, "SET_IRQ_FD", $"interrupt line {req.Line}", out WiredEventFd? line))
            return;
        _lines[req.Line]?.Dispose();
        _lines[req.Line] = line;
        Reply(h, MmioStatus.Ok);
    }

    private void OnSetQueueCallFd(MmioHeader h, byte[] p, SafeFileHandle[] fds)
    {
        if (!SetQueueCallFd.TryDecode(p, out SetQueueCallFd req))
        {
            Refuse(h, MmioStatus.BadMessage, $"SET_QUEUE_CALL_FD payload of {p.Length} bytes (expected {SetQueueCallFd.Size}, pad zero)");
            return;
        }
        int queues = Math.Max(0, _device.QueueCount);
        if (req.Queue >= (uint)queues)
        {
            Refuse(h, MmioStatus.BadRange, $"queue {req.Queue} does not exist (the device has {queues})");
            return;
        }
        int queue = (int)req.Queue;
        // A call eventfd is an interrupt line in all but name: never a doorbell too (WiredEventFds).
        if (!TryAdoptLine(h, fds, "SET_QUEUE_CALL_FD", $"call eventfd of queue {queue}", out WiredEventFd? call))
            return;
        if (_queueCalls.Remove(queue, out WiredEventFd? old)) old.Dispose();
        if (call is not null) _queueCalls[queue] = call;
        Reply(h, MmioStatus.Ok);
    }

    /// <summary>The optional descriptor of SET_IRQ_FD or SET_QUEUE_CALL_FD, adopted as an interrupt
    /// line (<see cref="Adopt"/>); <paramref name="line"/> is null when the message carries none
    /// (the request unwires). Refuses the request and returns false for more than one descriptor
    /// or one that cannot be adopted.</summary>
    private bool TryAdoptLine(MmioHeader h, SafeFileHandle[] fds, string message, string what, out WiredEventFd? line)
    {
        line = null;
        if (fds.Length > 1)
        {
            Refuse(h, MmioStatus.BadFd, $"{message} carries {fds.Length} descriptors (0 or 1)");
            return false;
        }
        if (fds.Length == 0) return true;
        line = Adopt(h, fds[0], line: true, what);
        return line is not null;
    }

    /// <summary>Checks that <paramref name="fd"/> is an eventfd not wired in the other role (on any
    /// device), duplicates it and takes it in <see cref="WiredEventFds"/>; refuses the request and
    /// returns null otherwise.</summary>
    private WiredEventFd? Adopt(MmioHeader h, SafeFileHandle fd, bool line, string what)
    {
        string? why = CheckEventFd(fd);
        if (why is not null)
        {
            Refuse(h, MmioStatus.BadFd, $"{what}: {why}");
            return null;
        }
        long id;
        try
        {
            id = IdOf(fd);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Unreadable is not "the kernel shows no id": wiring it would switch the guard off
            // for a descriptor the device could not check (EMFILE here: the dup fails next anyway).
            Refuse(h, MmioStatus.Failed, $"{what}: cannot read the descriptor's /proc/self/fdinfo: {ex.Message}");
            return null;
        }
        if (!WiredEventFds.TryTake(id, line))
        {
            Refuse(h, MmioStatus.BadFd, $"{what}: the eventfd is {(line ? "a NOTIFY doorbell" : "an interrupt line")} (here or on another device); each interrupt would ring it");
            return null;
        }
        try
        {
            return new WiredEventFd(EventFd.Adopt(Fd.Dup(fd)), id, line);
        }
        catch (PosixException ex)
        {
            WiredEventFds.Release(id, line);
            Refuse(h, MmioStatus.Failed, $"{what}: {ex.Message}");
            return null;
        }
    }

    private void OnSetNotifyFd(MmioHeader h, byte[] p, SafeFileHandle[] fds)
    {
        if (!SetNotifyFd.TryDecode(p, out SetNotifyFd req))
        {
            Refuse(h, MmioStatus.BadMessage, $"SET_NOTIFY_FD payload of {p.Length} bytes (expected {SetNotifyFd.Size})");
            return;
        }
        if (fds.Length > 1)
        {
            Refuse(h, MmioStatus.BadFd, $"SET_NOTIFY_FD carries {fds.Length} descriptors (0 or 1)");
            return;
        }
        // One doorbell per offset the guest writes, at most one per region slot in all: a VMM
        // cannot make the device hold more descriptors than it has slots.
        DeviceDescription d = _device.Description;
        ulong window = _session.Registers.ShmLength(ShmId.Notify);
        if (window == MmioRegister.NoSharedMemory || req.Offset >= window || d.NotifySize == 0 || req.Offset / d.NotifySize >= (ulong)d.MaxRegions)
        {
            Refuse(h, MmioStatus.BadRange, $"NOTIFY offset 0x{req.Offset:x} is outside the region slots of the NOTIFY window");
            return;
        }
        if (fds.Length == 0)
        {
            if (_doorbells.Remove(req.Offset, out Doorbell? gone)) gone.Dispose();
            Reply(h, MmioStatus.Ok);
            return;
        }
        if (!_doorbells.ContainsKey(req.Offset) && _doorbells.Count >= d.MaxRegions)
        {
            Refuse(h, MmioStatus.BadRange, $"{_doorbells.Count} doorbells are wired, one per region slot; unwire one first");
            return;
        }
        string what = $"NOTIFY doorbell at 0x{req.Offset:x}";
        if (Adopt(h, fds[0], line: false, what) is not { } wired)
            return;
        var bell = new Doorbell(req.Offset, wired);
        try
        {
            bell.Watch = _loop.WatchReadable(bell.Fd.Handle, () => Ring(bell));
        }
        catch (PosixException ex)
        {
            bell.Dispose(); // closes the duplicate and releases the id
            Refuse(h, MmioStatus.Failed, $"{what}: {ex.Message}");
            return;
        }
        if (_doorbells.Remove(req.Offset, out Doorbell? old)) old.Dispose();
        _doorbells[req.Offset] = bell;
        Reply(h, MmioStatus.Ok);
    }

    /// <summary>A doorbell was signalled: one NOTIFY of its offset, however many signals the counter
    /// gathered since the last read (writes coalesce, as the polled window's do).</summary>
    private void Ring(Doorbell bell)
    {
        if (bell.Disposed || _closed) return;
        if (bell.Fd.Drain() != 0) _session.Notify(bell.Offset, 1);
    }

    private long IdOf(SafeFileHandle fd)
    {
        long id = WiredEventFds.IdOf(fd);
        if (WiredEventFds.FirstUnknown(id))
            _log.LogWarning("{Device}: the kernel does not show eventfd ids (/proc/self/fdinfo eventfd-id): an eventfd wired both as an interrupt line and as a NOTIFY doorbell cannot be refused", Name);
        return id;
    }

    private static string? CheckEventFd(SafeFileHandle fd)
    {
        // An interrupt line must be an eventfd: a pipe or socket could block the loop when full.
        string target;
        try
        {
            target = new FileInfo($"/proc/self/fd/{Fd.Raw(fd)}").LinkTarget ?? "";
        }
        catch (IOException ex)
        {
            return ex.Message;
        }
        if (target != "anon_inode:[eventfd]") return $"the descriptor is {target}, not an eventfd";
        Fd.SetNonBlocking(fd); // a saturated counter must give EAGAIN, never block the loop
        return null;
    }

    private void OnSetShmBase(MmioHeader h, byte[] p)
    {
        if (!SetShmBase.TryDecode(p, out SetShmBase req))
        {
            Refuse(h, MmioStatus.BadMessage, $"SET_SHM_BASE payload of {p.Length} bytes (expected {SetShmBase.Size})");
            return;
        }
        if (!_session.SetShmBase(req.Id, req.GuestPhysical))
        {
            Refuse(h, MmioStatus.BadRange, $"window {req.Id} does not exist, or base 0x{req.GuestPhysical:x} is unaligned or wraps");
            return;
        }
        Reply(h, MmioStatus.Ok);
    }

    private void CompleteRequest(MmioHeader h)
    {
        if (!_pending.Remove(h.Id, out PendingRequest? pending) || pending.Type != h.Type)
        {
            if (pending is not null) _pending[h.Id] = pending;
            Refuse(h, MmioStatus.BadMessage, $"a {h.Type} reply with id {h.Id} answers no request in flight", reply: false);
            return;
        }
        pending.Timer?.Dispose();
        pending.Completion.TrySetResult(h.Status == MmioStatus.Ok ? null : $"{h.Type} answered {h.Status}");
    }

    // ---- sending -----------------------------------------------------------------------------

    private static bool WantsReply(MmioHeader h) =>
        h.Type is not (MmioMessageType.Write or MmioMessageType.Notify) || (h.Flags & MmioMessageFlags.NeedReply) != 0;

    private static int Width(uint width) => width <= 8 ? (int)width : 0;

    private void Refuse(MmioHeader h, MmioStatus status, string reason, bool reply = true)
    {
        RateLimitedLog.Count(_counters, _log, LogLevel.Warning, "mmio.protocol.error", "{Device}: VMM message {Type} (id {Id}): {Status}: {Reason}",
            Name, h.Type, h.Id, status, reason);
        if (reply && WantsReply(h)) Reply(h, status);
    }

    private void Reply(MmioHeader h, MmioStatus status, ReadOnlySpan<byte> payload = default) =>
        _outbox.Add(MmioFrame.Build(h.Type, MmioMessageFlags.Reply, h.Id, payload, status));

    private void FlushReplies()
    {
        foreach (byte[] frame in _outbox) Send(frame, null);
        _outbox.Clear();
    }

    private void RejectAndClose(MmioStatus status, string reason)
    {
        _counters.Increment("mmio.vmm.rejected");
        _log.LogError("{Device}: refusing the VMM: {Reason}", Name, reason);
        Send(MmioFrame.Build(MmioMessageType.Reject, MmioMessageFlags.None, 0, new RejectMessage(status, reason).Encode()), null);
        Close(reason);
    }

    private void Send(byte[] frame, SafeHandle? fd)
    {
        if (_closed || _broken) return;
        try
        {
            // A VMM that stops reading its socket must not stall the loop (and every device on it):
            // when the socket buffer is mostly full the connection is dropped instead of waiting.
            if (!IsWritable(_socket))
            {
                Break("the VMM does not read its socket (send buffer full)");
                return;
            }
            if (fd is null) _socket.Send(frame);
            else _socket.Send(frame, [fd]);
        }
        catch (PosixException ex)
        {
            Break($"send failed: {ex.Message}");
        }
    }

    /// <summary>Sends REJECT on a connection that will not be served (another VMM is attached).</summary>
    public static void RejectBusy(UnixSocket socket, string reason)
    {
        try
        {
            if (IsWritable(socket))
                socket.Send(MmioFrame.Build(MmioMessageType.Reject, MmioMessageFlags.None, 0, new RejectMessage(MmioStatus.Busy, reason).Encode()));
        }
        catch (PosixException)
        {
            // It is being turned away anyway.
        }
    }

    private static bool IsWritable(UnixSocket socket)
    {
        var p = new[] { new Pollfd { fd = Fd.Raw(socket.Handle), events = PollEvents.POLLOUT } };
        return Syscall.poll(p, 1, 0) == 1 && (p[0].revents & PollEvents.POLLOUT) != 0;
    }

    private void Break(string reason)
    {
        // Called deep inside device code (a MAP sent while the device handles a request): mark the
        // connection broken now, end it from the top of the loop.
        if (_broken) return;
        _broken = true;
        _log.LogWarning("{Device}: {Reason}", Name, reason);
        _loop.Post(() => Close(reason));
    }

    // ---- lifetime ----------------------------------------------------------------------------

    /// <summary>Ends the connection: the device disconnects (releasing its attachments), requests in
    /// flight fail, every descriptor the VMM gave is closed. Idempotent.</summary>
    public void Close(string reason)
    {
        if (_closed) return;
        _closed = true;
        _counters.Increment("mmio.vmm.disconnected");
        _log.LogInformation("{Device}: VMM connection ended: {Reason}", Name, reason);
        _watch?.Dispose();
        _watch = null;
        foreach (PendingRequest p in _pending.Values)
        {
            p.Timer?.Dispose();
            p.Completion.TrySetResult($"the VMM disconnected ({reason})");
        }
        _pending.Clear();
        _outbox.Clear();
        _session.Detach();
        for (int i = 0; i < _lines.Length; i++)
        {
            _lines[i]?.Dispose();
            _lines[i] = null;
        }
        foreach (Doorbell bell in _doorbells.Values) bell.Dispose();
        _doorbells.Clear();
        foreach (WiredEventFd call in _queueCalls.Values) call.Dispose();
        _queueCalls.Clear();
        _memory.Dispose();
        _memory = MmioGuestMemory.Empty;
        foreach (SafeFileHandle fd in _fds) fd.Dispose();
        _fds.Clear();
        _socket.Dispose();
        _onClosed(this);
    }

    public void Dispose() => Close("the transport is shutting down");

    /// <summary>A NOTIFY doorbell (SET_NOTIFY_FD): the eventfd the VMM signals for writes at <see cref="Offset"/>.</summary>
    private sealed class Doorbell(ulong offset, WiredEventFd wired) : IDisposable
    {
        public ulong Offset { get; } = offset;
        public EventFd Fd => wired.Fd;
        public IDisposable? Watch { get; set; }
        public bool Disposed { get; private set; }

        public void Dispose()
        {
            if (Disposed) return;
            Disposed = true;
            Watch?.Dispose(); // before the descriptor is closed
            wired.Dispose();
        }
    }

    private sealed class PendingRequest(MmioMessageType type)
    {
        public MmioMessageType Type { get; } = type;
        public TaskCompletionSource<string?> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public IDisposable? Timer { get; set; }
    }
}
