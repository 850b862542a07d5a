using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;
using Vism.Mmio;

namespace Vism.Driver.Mmio;

/// <summary>Settings of an <see cref="MmioVmmClient"/>.</summary>
public sealed record MmioVmmOptions
{
    /// <summary>How long a request may wait for its reply.</summary>
    public TimeSpan ReplyTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Per-region vectors to wire (capped at what the device offers); null wires them all.</summary>
    public int? Vectors { get; init; }

    /// <summary>Guest-physical base of the REGIONS window; null places it at the first 1 GiB
    /// boundary after guest RAM (the NOTIFY window follows it).</summary>
    public ulong? RegionsBase { get; init; }

    /// <summary>The protocol version sent in HELLO (only a test of the handshake changes it).</summary>
    public uint ProtocolVersion { get; init; } = MmioProtocol.Version;

    /// <summary>Called with the descriptor of every MAP request before it is mapped, with the
    /// window offset and whether the device asked for a writable mapping. For tests that play a
    /// VMM keeping the descriptor (the callback may duplicate it); null by default.</summary>
    public Action<ulong, SafeHandle, bool>? DescriptorReceived { get; init; }

    /// <summary>Whether NOTIFY-window writes ring doorbell eventfds (SET_NOTIFY_FD, as a KVM VMM
    /// registers an ioeventfd per notify address) instead of travelling as NOTIFY messages. The
    /// first write to an offset wires its doorbell (one round trip); later writes are one eventfd
    /// write each. A device that does not know SET_NOTIFY_FD (UNKNOWN_TYPE), or refuses an offset,
    /// gets NOTIFY messages as before. Default true.</summary>
    public bool NotifyDoorbells { get; init; } = true;

    /// <summary>Whether each virtqueue gets a call eventfd of its own (SET_QUEUE_CALL_FD, as a
    /// vhost-user frontend's SET_VRING_CALL): the device signals it for the queue's used buffers
    /// instead of setting InterruptStatus and firing the standard line, and <see cref="MmioVmmClient.WaitQueue"/>
    /// waits on it directly, with no interrupt thread and no InterruptStatus READ + ACK in between.
    /// Wired when the queue starts; a device that does not know the message (UNKNOWN_TYPE) or
    /// refuses it keeps the standard line. Default true.</summary>
    public bool QueueCallFds { get; init; } = true;
}

/// <summary>
/// The VMM half of the MMIO transport, as an <see cref="IDriverTransport"/>: it plays a VMM whose
/// guest driver touches the device's register window, forwarding each access over the socket
/// (docs/mmio-protocol.md). Guest RAM is a <see cref="GuestRam"/> memfd given to the device with
/// SET_MEM_TABLE; the standard interrupt and each per-region vector are eventfds; the REGIONS
/// window is a reserved address range into which the device's MAP requests are mapped, as a VMM
/// would map them into guest-physical space; NOTIFY-window writes ring a doorbell eventfd per
/// offset (SET_NOTIFY_FD, KVM's ioeventfd) or, with doorbells off, are trapped and forwarded.
/// Connecting probes the device the way Linux's virtio_mmio does (magic, version, device id).
/// Thread-safe; one reader thread serves the device's requests, one thread handles the standard
/// interrupt line; per-region vectors are waited on by their callers directly (spin, then poll).
/// </summary>
public sealed class MmioVmmClient : IDriverTransport
{
    private const ulong OneGiB = 1UL << 30;

    private readonly UnixSocket _socket;
    private readonly MmioVmmOptions _options;
    private readonly bool _ownsRam;
    private readonly Lock _sendLock = new();
    private readonly object _irqLock = new(); // Monitor.Wait/PulseAll: interrupts wake waiters
    private readonly ConcurrentDictionary<uint, TaskCompletionSource<(MmioHeader, byte[])>> _pending = new();
    private readonly List<(ulong Offset, ulong Length)> _mappings = [];
    private readonly EventFd _line = EventFd.Create();
    private readonly EventFd[] _vectors;
    private readonly EventFd _stop = EventFd.Create();
    private readonly ConcurrentDictionary<ulong, EventFd?> _doorbells = new(); // null: the device refused the offset
    private readonly Lock _wireLock = new();
    private volatile bool _noDoorbells;
    private readonly long[] _vectorFirings;
    private readonly bool[] _queueSignalled = new bool[64];
    private readonly EventFd?[] _queueCalls = new EventFd?[64]; // SET_QUEUE_CALL_FD, by queue index
    private volatile bool _noQueueCalls;
    private readonly Mapping? _regionsView;
    private readonly Thread _reader;
    private readonly Thread _interrupts;
    private uint _nextId;
    private volatile string? _failure;
    private int _disposed;
    private long _mapRequests;
    private long _configChanges;
    private long _lineFirings; // under _irqLock: line-0 firings seen, counted before InterruptStatus is read

    private MmioVmmClient(UnixSocket socket, GuestRam ram, bool ownsRam, MmioVmmOptions options, HelloReply hello)
    {
        _socket = socket;
        Ram = ram;
        _ownsRam = ownsRam;
        _options = options;
        Hello = hello;
        int vectors = (int)Math.Min(hello.Vectors, (uint)Math.Max(0, options.Vectors ?? int.MaxValue));
        _vectors = new EventFd[vectors];
        for (int i = 0; i < vectors; i++) _vectors[i] = EventFd.Create();
        _vectorFirings = new long[vectors];
        ulong regionsLength = WindowLength(ShmId.Regions);
        if (regionsLength != 0) _regionsView = Mapping.Reserve(regionsLength);
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "vism-mmio-vmm-reader" };
        _interrupts = new Thread(InterruptLoop) { IsBackground = true, Name = "vism-mmio-vmm-irq" };
    }

    /// <summary>The device's HELLO reply (window size, vectors, shared-memory windows).</summary>
    public HelloReply Hello { get; }

    /// <inheritdoc />
    public GuestRam Ram { get; }

    /// <inheritdoc />
    public uint DeviceId { get; private set; }

    /// <inheritdoc />
    public int VectorCount => _vectors.Length;

    /// <summary>Where the REGIONS window sits in guest-physical space.</summary>
    public ulong RegionsBase { get; private set; }

    /// <summary>Where the NOTIFY window sits in guest-physical space.</summary>
    public ulong NotifyBase { get; private set; }

    /// <summary>MAP requests the device has sent so far.</summary>
    public long MapRequests => Interlocked.Read(ref _mapRequests);

    /// <summary>Configuration-change interrupts received (InterruptStatus bit 1), e.g. after DEVICE_NEEDS_RESET.</summary>
    public long ConfigChanges => Interlocked.Read(ref _configChanges);

    /// <summary>Mappings the device holds in the REGIONS window now.</summary>
    public int MappingCount
    {
        get { lock (_mappings) return _mappings.Count; }
    }

    /// <summary>Why the connection ended, once it has (a REJECT from the device, a closed socket).</summary>
    public string? Failure => _failure;

    /// <summary>Connects to a device's MMIO socket, does the handshake, gives it guest RAM, its
    /// interrupt lines and its windows' places, and probes it as Linux does.</summary>
    /// <param name="socketPath">The device's socket.</param>
    /// <param name="ram">Guest RAM to use; null creates 4 MiB (owned by the client).</param>
    /// <param name="options">Settings; null for the defaults.</param>
    /// <returns>The connected client.</returns>
    /// <exception cref="DriverTransportException">The device refused the handshake (version, busy) or failed the probe.</exception>
    public static MmioVmmClient Connect(string socketPath, GuestRam? ram = null, MmioVmmOptions? options = null)
    {
        options ??= new MmioVmmOptions();
        UnixSocket socket;
        try
        {
            socket = UnixSocket.Connect(socketPath);
        }
        catch (PosixException ex)
        {
            throw new DriverTransportException($"cannot connect to {socketPath}: {ex.Message}", ex);
        }
        bool ownsRam = ram is null;
        MmioVmmClient? client = null;
        try
        {
            HelloReply hello = Handshake(socket, options);
            ram ??= new GuestRam();
            client = new MmioVmmClient(socket, ram, ownsRam, options, hello);
            client._reader.Start();
            client._interrupts.Start();
            client.Configure();
            client.Probe();
            return client;
        }
        catch
        {
            if (client is not null) client.Dispose();
            else
            {
                socket.Dispose();
                if (ownsRam) ram?.Dispose();
            }
            throw;
        }
    }

    private static HelloReply Handshake(UnixSocket socket, MmioVmmOptions options)
    {
        try
        {
            socket.Send(MmioFrame.Build(MmioMessageType.Hello, MmioMessageFlags.None, 0,
                new HelloRequest(MmioProtocol.Magic, options.ProtocolVersion).Encode()));
        }
        catch (PosixException)
        {
            // The device may have turned us away before reading HELLO (BUSY): its REJECT is waiting.
        }
        if (!socket.WaitReadable((int)options.ReplyTimeout.TotalMilliseconds))
            throw new DriverTransportException("the device did not answer HELLO");
        (MmioHeader h, byte[] p) = MmioFrame.Receive(socket, null)
            ?? throw new DriverTransportException("the device closed the connection during the handshake");
        if (h.Type == MmioMessageType.Reject)
            throw new DriverTransportException($"the device refused the connection: {DescribeReject(p)}");
        if (h.Type != MmioMessageType.Hello || !h.IsReply || !HelloReply.TryDecode(p, out HelloReply? hello) || hello!.Magic != MmioProtocol.Magic)
            throw new DriverTransportException($"the peer answered HELLO with {h.Type}: it does not speak the vism MMIO protocol");
        if (h.Status == MmioStatus.VersionMismatch || hello.Version != options.ProtocolVersion)
            throw new DriverTransportException(
                $"MMIO protocol version mismatch: this VMM speaks version {options.ProtocolVersion}, the device speaks version {hello.Version}");
        if (h.Status != MmioStatus.Ok)
            throw new DriverTransportException($"the device answered HELLO with {h.Status}");
        return hello;
    }

    private void Configure()
    {
        Check(Call(MmioMessageType.SetMemTable, SetMemTable.Encode([new MemoryRegion(Ram.GuestBase, Ram.Size, 0)]), [Ram.Handle]), "SET_MEM_TABLE");
        Check(Call(MmioMessageType.SetIrqFd, new SetIrqFd(MmioProtocol.StandardIrqLine).Encode(), [_line.Handle]), "SET_IRQ_FD (standard line)");
        for (int v = 0; v < _vectors.Length; v++)
            Check(Call(MmioMessageType.SetIrqFd, new SetIrqFd(1 + (uint)v).Encode(), [_vectors[v].Handle]), $"SET_IRQ_FD (vector {v})");
        ulong next = _options.RegionsBase ?? AlignUp(Ram.GuestBase + Ram.Size, OneGiB);
        foreach (ShmId id in new[] { ShmId.Regions, ShmId.Notify })
        {
            ulong length = WindowLength(id);
            if (length == 0) continue;
            Check(Call(MmioMessageType.SetShmBase, new SetShmBase(id, next).Encode(), []), $"SET_SHM_BASE ({id})");
            if (id == ShmId.Regions) RegionsBase = next;
            else NotifyBase = next;
            next = AlignUp(next + length, MmioProtocol.PageSize);
        }
    }

    private void Probe()
    {
        // As Linux's virtio_mmio_probe: magic, version, then the device id (0 = placeholder).
        uint magic = ReadRegister(MmioRegister.MagicValue);
        if (magic != MmioRegister.Magic) throw new DriverTransportException($"wrong magic value 0x{magic:x8}");
        uint version = ReadRegister(MmioRegister.Version);
        if (version != MmioRegister.CurrentVersion) throw new DriverTransportException($"virtio-mmio version {version} not supported (only 2)");
        DeviceId = ReadRegister(MmioRegister.DeviceId);
        if (DeviceId == 0) throw new DriverTransportException("device id 0: a placeholder with no function");
        ReadRegister(MmioRegister.VendorId);
    }

    // ---- raw register access --------------------------------------------------------------------

    /// <summary>A trapped read of the register window.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="width">Access width.</param>
    /// <param name="value">What the guest reads.</param>
    /// <returns>The device's status for the access (<see cref="MmioStatus.BadAccess"/> when the window rejected it).</returns>
    public MmioStatus TryReadRegister(uint offset, int width, out ulong value)
    {
        (MmioHeader h, byte[] p) = Call(MmioMessageType.Read, new RegisterAccess(offset, (uint)width, 0).Encode(), []);
        value = ReadReply.TryDecode(p, out ulong v) ? v : 0;
        return h.Status;
    }

    /// <summary>A trapped write to the register window, confirmed by the device.</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="width">Access width.</param>
    /// <param name="value">The value.</param>
    /// <returns>The device's status for the access.</returns>
    public MmioStatus TryWriteRegister(uint offset, int width, ulong value) =>
        Call(MmioMessageType.Write, new RegisterAccess(offset, (uint)width, value).Encode(), [], MmioMessageFlags.NeedReply).Header.Status;

    /// <summary>A 32-bit read that must succeed.</summary>
    /// <param name="offset">Byte offset.</param>
    public uint ReadRegister(uint offset)
    {
        MmioStatus s = TryReadRegister(offset, 4, out ulong v);
        if (s != MmioStatus.Ok) throw new DriverTransportException($"reading {MmioRegister.Name(offset)} answered {s}");
        return (uint)v;
    }

    /// <summary>A posted 32-bit write (not confirmed, as a guest's store; later reads see it).</summary>
    /// <param name="offset">Byte offset.</param>
    /// <param name="value">The value.</param>
    public void WriteRegister(uint offset, uint value) =>
        Post(MmioMessageType.Write, new RegisterAccess(offset, 4, value).Encode());

    // ---- IDriverTransport -----------------------------------------------------------------------

    /// <inheritdoc />
    public ulong ReadDeviceFeatures()
    {
        WriteRegister(MmioRegister.DeviceFeaturesSel, 1);
        ulong features = (ulong)ReadRegister(MmioRegister.DeviceFeatures) << 32;
        WriteRegister(MmioRegister.DeviceFeaturesSel, 0);
        return features | ReadRegister(MmioRegister.DeviceFeatures);
    }

    /// <inheritdoc />
    public void WriteDriverFeatures(ulong features)
    {
        WriteRegister(MmioRegister.DriverFeaturesSel, 1);
        WriteRegister(MmioRegister.DriverFeatures, (uint)(features >> 32));
        WriteRegister(MmioRegister.DriverFeaturesSel, 0);
        WriteRegister(MmioRegister.DriverFeatures, (uint)features);
    }

    /// <inheritdoc />
    public DeviceStatus ReadStatus() => (DeviceStatus)(ReadRegister(MmioRegister.Status) & 0xff);

    /// <inheritdoc />
    public void WriteStatus(DeviceStatus status)
    {
        WriteRegister(MmioRegister.Status, (uint)status);
        if (status == DeviceStatus.Reset)
            lock (_irqLock) Array.Clear(_queueSignalled);
    }

    /// <inheritdoc />
    public void ReadConfig(uint offset, Span<byte> destination)
    {
        // Aligned dwords where possible, as virtio_mmio's vm_get does for 32/64-bit fields.
        int done = 0;
        while (done < destination.Length)
        {
            uint at = offset + (uint)done;
            int rest = destination.Length - done;
            int width = at % 4 == 0 && rest >= 4 ? 4 : at % 2 == 0 && rest >= 2 ? 2 : 1;
            MmioStatus s = TryReadRegister(MmioRegister.Config + at, width, out ulong v);
            if (s != MmioStatus.Ok) throw new DriverTransportException($"reading config byte {at} ({width} bytes) answered {s}");
            for (int i = 0; i < width; i++) destination[done + i] = (byte)(v >> (8 * i));
            done += width;
        }
    }

    /// <inheritdoc />
    public uint ReadConfigGeneration() => ReadRegister(MmioRegister.ConfigGeneration);

    /// <inheritdoc />
    public ushort MaxQueueSize(int index)
    {
        WriteRegister(MmioRegister.QueueSel, (uint)index);
        return (ushort)ReadRegister(MmioRegister.QueueNumMax);
    }

    /// <inheritdoc />
    public void StartQueue(int index, QueueSettings settings)
    {
        // vm_setup_vq's order: select, check not ready, max size, size, the three areas, ready.
        WriteRegister(MmioRegister.QueueSel, (uint)index);
        if (ReadRegister(MmioRegister.QueueReady) != 0) throw new DriverTransportException($"queue {index} is already set up");
        uint max = ReadRegister(MmioRegister.QueueNumMax);
        if (max == 0) throw new DriverTransportException($"queue {index} is not available");
        if (settings.Size > max) throw new DriverTransportException($"queue {index}: size {settings.Size} exceeds the maximum {max}");
        WriteRegister(MmioRegister.QueueNum, settings.Size);
        WriteRegister(MmioRegister.QueueDescLow, (uint)settings.DescriptorTable);
        WriteRegister(MmioRegister.QueueDescHigh, (uint)(settings.DescriptorTable >> 32));
        WriteRegister(MmioRegister.QueueDriverLow, (uint)settings.AvailRing);
        WriteRegister(MmioRegister.QueueDriverHigh, (uint)(settings.AvailRing >> 32));
        WriteRegister(MmioRegister.QueueDeviceLow, (uint)settings.UsedRing);
        WriteRegister(MmioRegister.QueueDeviceHigh, (uint)(settings.UsedRing >> 32));
        WriteRegister(MmioRegister.QueueReady, 1);
        if (ReadRegister(MmioRegister.QueueReady) != 1)
            throw new DriverTransportException($"the device refused queue {index} ({settings})");
        if (_options.QueueCallFds && !_noQueueCalls && (uint)index < (uint)_queueCalls.Length)
            WireQueueCall(index);
    }

    /// <summary>Gives queue <paramref name="index"/> a call eventfd (kept across a driver reset: the
    /// same eventfd is wired again when the queue starts again).</summary>
    private void WireQueueCall(int index)
    {
        lock (_wireLock)
        {
            EventFd? kept = _queueCalls[index];
            EventFd call = kept ?? EventFd.Create();
            MmioStatus status = SendEventFd(MmioMessageType.SetQueueCallFd, new SetQueueCallFd((uint)index).Encode(), call, fresh: kept is null);
            if (status == MmioStatus.Ok) _queueCalls[index] = call;
            // A device from before SET_QUEUE_CALL_FD (or one that refuses the queue): the standard
            // line and InterruptStatus, as before.
            else if (status == MmioStatus.UnknownType) _noQueueCalls = true;
        }
    }

    /// <summary>Sends a SET_* message carrying <paramref name="fd"/> and returns the device's status.
    /// A <paramref name="fresh"/> eventfd (one this client keeps nowhere yet) is closed when the call
    /// throws or the device does not answer OK.</summary>
    private MmioStatus SendEventFd(MmioMessageType type, byte[] payload, EventFd fd, bool fresh)
    {
        MmioStatus status;
        try
        {
            status = Call(type, payload, [fd.Handle]).Header.Status;
        }
        catch
        {
            if (fresh) fd.Dispose();
            throw;
        }
        if (status != MmioStatus.Ok && fresh) fd.Dispose();
        return status;
    }

    /// <summary>Whether queue <paramref name="index"/> has a call eventfd of its own (SET_QUEUE_CALL_FD).</summary>
    /// <param name="index">The queue.</param>
    public bool HasQueueCall(int index) => (uint)index < (uint)_queueCalls.Length && Volatile.Read(ref _queueCalls[index]) is not null;

    /// <inheritdoc />
    public void Kick(int index) => WriteRegister(MmioRegister.QueueNotify, (uint)index);

    /// <inheritdoc />
    /// <remarks>Returns as soon as the standard line fires while it waits: the device writes the used
    /// ring before it raises the line, so the caller can look at its ring while the interrupt thread
    /// still reads and acknowledges InterruptStatus (a round trip through the device's loop). That
    /// early return may be spurious (a configuration change; another queue's buffer), which the
    /// contract allows: callers re-check their used ring.</remarks>
    public bool WaitQueue(int index, TimeSpan timeout)
    {
        if ((uint)index >= (uint)_queueSignalled.Length) return false;
        if (Volatile.Read(ref _queueCalls[index]) is { } call)
        {
            // The queue's own call eventfd: the caller sleeps on it, woken by the device directly.
            ThrowIfFailed();
            ulong n = call.Wait(timeout, TimeSpan.Zero);
            ThrowIfFailed(); // Fail signals every call eventfd so a waiter learns of it at once
            return n != 0;
        }
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_irqLock)
        {
            long firings = _lineFirings;
            while (!_queueSignalled[index])
            {
                ThrowIfFailed();
                if (_lineFirings != firings) return true;
                long left = deadline - Environment.TickCount64;
                if (left <= 0) return false;
                Monitor.Wait(_irqLock, (int)Math.Min(left, 100));
            }
            _queueSignalled[index] = false;
            return true;
        }
    }

    /// <inheritdoc />
    public ulong ShmLength(ShmId id)
    {
        WriteRegister(MmioRegister.ShmSel, (uint)id);
        ulong length = ReadRegister(MmioRegister.ShmLenLow) | ((ulong)ReadRegister(MmioRegister.ShmLenHigh) << 32);
        return length == MmioRegister.NoSharedMemory ? 0 : length;
    }

    /// <summary>The guest-physical base of window <paramref name="id"/> as the guest reads it (SHMBase).</summary>
    /// <param name="id">The window.</param>
    public ulong ShmBase(ShmId id)
    {
        WriteRegister(MmioRegister.ShmSel, (uint)id);
        return ReadRegister(MmioRegister.ShmBaseLow) | ((ulong)ReadRegister(MmioRegister.ShmBaseHigh) << 32);
    }

    /// <inheritdoc />
    /// <remarks>The NOTIFY window is trapped, not memory: it has no address (0); write it with <see cref="WriteNotify"/>.</remarks>
    public nint ShmAddress(ShmId id) => id == ShmId.Regions && _regionsView is not null ? _regionsView.Address : 0;

    /// <inheritdoc />
    /// <remarks>With <see cref="MmioVmmOptions.NotifyDoorbells"/> (the default) the write is one
    /// signal of the offset's doorbell eventfd, as KVM's ioeventfd would do it: the device reads it
    /// on its loop, and writes that come before it does coalesce into one update (as they do in the
    /// polled window of vhost-user). A doorbell is not ordered with socket messages: use
    /// <see cref="TryWriteNotify"/> where a later request must see the write handled.</remarks>
    public void WriteNotify(ulong offset, byte value = 1)
    {
        if (_options.NotifyDoorbells && !_noDoorbells)
        {
            ThrowIfFailed();
            EventFd? bell = _doorbells.TryGetValue(offset, out EventFd? wired) ? wired : WireDoorbell(offset);
            if (bell is not null)
            {
                try
                {
                    bell.Signal();
                }
                catch (ObjectDisposedException ex)
                {
                    throw new DriverTransportException("the VMM client was disposed", ex);
                }
                return;
            }
        }
        Post(MmioMessageType.Notify, new NotifyWrite(offset, 1, value).Encode());
    }

    /// <summary>Doorbells wired so far (SET_NOTIFY_FD answered OK).</summary>
    public int DoorbellCount => _doorbells.Values.Count(b => b is not null);

    /// <summary>Waits until the device has read every doorbell signalled so far (each doorbell's
    /// counter is back to 0): from then on, work the device posts to its loop comes after those
    /// writes were handled. For tests and tools that must know a notify has reached the device.</summary>
    /// <param name="timeout">How long to wait at most.</param>
    /// <returns>False when a doorbell was still unread at the deadline.</returns>
    public bool WaitDoorbellsRead(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        foreach (EventFd? bell in _doorbells.Values)
        {
            if (bell is null) continue;
            var p = new[] { new Pollfd { fd = Fd.Raw(bell.Handle), events = PollEvents.POLLIN } };
            while (Syscall.poll(p, 1, 0) == 1 && (p[0].revents & PollEvents.POLLIN) != 0)
            {
                ThrowIfFailed();
                if (Environment.TickCount64 > deadline) return false;
                Thread.Sleep(1);
            }
        }
        return true;
    }

    private EventFd? WireDoorbell(ulong offset)
    {
        lock (_wireLock)
        {
            if (_doorbells.TryGetValue(offset, out EventFd? wired)) return wired;
            var bell = EventFd.Create();
            MmioStatus status = SendEventFd(MmioMessageType.SetNotifyFd, new SetNotifyFd(offset).Encode(), bell, fresh: true);
            if (status == MmioStatus.Ok)
            {
                _doorbells[offset] = bell;
                return bell;
            }
            // A device from before SET_NOTIFY_FD: messages from now on. A refused offset (outside the
            // slots): NOTIFY messages for it, which the device rejects and counts as it always has.
            if (status == MmioStatus.UnknownType) _noDoorbells = true;
            else _doorbells[offset] = null;
            return null;
        }
    }

    /// <summary>A NOTIFY write the device confirms (to see its status).</summary>
    /// <param name="offset">Offset inside the NOTIFY window.</param>
    /// <param name="width">Access width.</param>
    /// <returns>The device's status.</returns>
    public MmioStatus TryWriteNotify(ulong offset, int width = 1) =>
        Call(MmioMessageType.Notify, new NotifyWrite(offset, (uint)width, 1).Encode(), [], MmioMessageFlags.NeedReply).Header.Status;

    /// <inheritdoc />
    public bool WaitVector(int vector, TimeSpan timeout) => WaitVector(vector, timeout, TimeSpan.Zero);

    /// <inheritdoc />
    /// <remarks>The caller waits on the vector's eventfd itself (the irqfd the device writes), as a
    /// vhost-user driver waits on its call eventfd: polling it for up to <paramref name="spin"/> and
    /// then sleeping in poll(2). No thread sits between the device and the waiter, so a firing costs
    /// at most the waiter's own wake-up. Firings that arrive together are kept and returned one by one.</remarks>
    public bool WaitVector(int vector, TimeSpan timeout, TimeSpan spin)
    {
        if ((uint)vector >= (uint)_vectors.Length) return false;
        ThrowIfFailed();
        if (TakeFiring(vector)) return true;
        ulong n = _vectors[vector].Wait(timeout, spin);
        ThrowIfFailed(); // Fail signals every vector so a waiter learns of it at once
        if (n == 0) return TakeFiring(vector);
        if (n > 1) Interlocked.Add(ref _vectorFirings[vector], (long)Math.Min(n - 1, long.MaxValue));
        return true;
    }

    private bool TakeFiring(int vector)
    {
        ref long held = ref _vectorFirings[vector];
        for (long h = Volatile.Read(ref held); h > 0; h = Volatile.Read(ref held))
            if (Interlocked.CompareExchange(ref held, h - 1, h) == h) return true;
        return false;
    }

    /// <summary>Sends any message and waits for its reply (for protocol tests).</summary>
    /// <param name="type">Message type.</param>
    /// <param name="payload">Payload.</param>
    /// <param name="fds">Descriptors to pass.</param>
    /// <param name="flags">Extra flags (<see cref="MmioMessageFlags.NeedReply"/> for posted types).</param>
    /// <returns>The reply header and payload.</returns>
    public (MmioHeader Header, byte[] Payload) Call(MmioMessageType type, byte[] payload, SafeHandle[] fds, MmioMessageFlags flags = MmioMessageFlags.None)
    {
        ThrowIfFailed();
        uint id = Interlocked.Increment(ref _nextId);
        var tcs = new TaskCompletionSource<(MmioHeader, byte[])>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = tcs;
        try
        {
            Send(MmioFrame.Build(type, flags, id, payload), fds);
            if (!tcs.Task.Wait(_options.ReplyTimeout))
                throw new DriverTransportException($"the device did not answer {type} within {_options.ReplyTimeout}");
            return tcs.Task.Result;
        }
        catch (AggregateException ex) when (ex.InnerException is DriverTransportException inner)
        {
            throw new DriverTransportException(inner.Message, inner);
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    private void Post(MmioMessageType type, byte[] payload)
    {
        ThrowIfFailed();
        Send(MmioFrame.Build(type, MmioMessageFlags.None, Interlocked.Increment(ref _nextId), payload), []);
    }

    private void Send(byte[] frame, ReadOnlySpan<SafeHandle> fds)
    {
        try
        {
            lock (_sendLock) _socket.Send(frame, fds);
        }
        catch (Exception ex) when (ex is PosixException or ObjectDisposedException)
        {
            Fail($"sending to the device failed: {ex.Message}");
            throw new DriverTransportException(_failure!, ex);
        }
    }

    private static void Check((MmioHeader Header, byte[] Payload) reply, string what)
    {
        if (reply.Header.Status != MmioStatus.Ok)
            throw new DriverTransportException($"{what} answered {reply.Header.Status}");
    }

    private void ThrowIfFailed()
    {
        if (_failure is { } f) throw new DriverTransportException(f);
    }

    // ---- the reader thread: replies and the device's requests ------------------------------------

    private void ReadLoop()
    {
        var fds = new List<SafeFileHandle>();
        try
        {
            while (true)
            {
                fds.Clear();
                (MmioHeader h, byte[] p)? message = MmioFrame.Receive(_socket, fds);
                if (message is null)
                {
                    Fail("the device closed the connection");
                    return;
                }
                (MmioHeader h, byte[] p) = message.Value;
                try
                {
                    Handle(h, p, fds);
                }
                finally
                {
                    foreach (SafeFileHandle fd in fds) fd.Dispose();
                }
            }
        }
        catch (Exception ex) when (ex is PosixException or EndOfStreamException or ObjectDisposedException or InvalidDataException)
        {
            Fail($"the connection to the device broke: {ex.Message}");
        }
    }

    private void Handle(MmioHeader h, byte[] p, List<SafeFileHandle> fds)
    {
        if (h.IsReply)
        {
            if (_pending.TryRemove(h.Id, out TaskCompletionSource<(MmioHeader, byte[])>? tcs)) tcs.TrySetResult((h, p));
            return;
        }
        switch (h.Type)
        {
            case MmioMessageType.Map:
                Interlocked.Increment(ref _mapRequests);
                ReplyToDevice(h, Map(p, fds));
                break;
            case MmioMessageType.Unmap:
                ReplyToDevice(h, Unmap(p, fds));
                break;
            case MmioMessageType.Reject:
                Fail($"the device refused the connection: {DescribeReject(p)}");
                break;
            default:
                ReplyToDevice(h, MmioStatus.UnknownType);
                break;
        }
    }

    private MmioStatus Map(byte[] p, List<SafeFileHandle> fds)
    {
        if (!WindowMapping.TryDecode(p, out WindowMapping m)) return MmioStatus.BadMessage;
        if (fds.Count != 1) return MmioStatus.BadFd;
        if (m.Id != ShmId.Regions || _regionsView is null || !InWindow(m.ShmOffset, m.Length)) return MmioStatus.BadRange;
        _options.DescriptorReceived?.Invoke(m.ShmOffset, fds[0], m.Writable);
        lock (_mappings)
        {
            foreach ((ulong off, ulong len) in _mappings)
                if (m.ShmOffset < off + len && off < m.ShmOffset + m.Length) return MmioStatus.BadRange;
            try
            {
                _regionsView.MapFixed(m.ShmOffset, fds[0], m.FdOffset, m.Length, m.Writable);
            }
            catch (Exception ex) when (ex is PosixException or ArgumentException)
            {
                return MmioStatus.Failed;
            }
            _mappings.Add((m.ShmOffset, m.Length));
        }
        return MmioStatus.Ok;
    }

    private MmioStatus Unmap(byte[] p, List<SafeFileHandle> fds)
    {
        if (!WindowMapping.TryDecode(p, out WindowMapping m)) return MmioStatus.BadMessage;
        if (fds.Count != 0) return MmioStatus.BadFd;
        if (m.Id != ShmId.Regions || _regionsView is null) return MmioStatus.BadRange;
        lock (_mappings)
        {
            int i = _mappings.IndexOf((m.ShmOffset, m.Length));
            if (i < 0) return MmioStatus.BadRange;
            try
            {
                _regionsView.UnmapFixed(m.ShmOffset, m.Length);
            }
            catch (PosixException)
            {
                return MmioStatus.Failed;
            }
            _mappings.RemoveAt(i);
        }
        return MmioStatus.Ok;
    }

    private bool InWindow(ulong offset, ulong length)
    {
        ulong window = _regionsView!.Length;
        return length != 0 && offset % MmioProtocol.PageSize == 0 && length % MmioProtocol.PageSize == 0
            && offset <= window && length <= window - offset;
    }

    private void ReplyToDevice(MmioHeader request, MmioStatus status)
    {
        try
        {
            lock (_sendLock) _socket.Send(MmioFrame.Build(request.Type, MmioMessageFlags.Reply, request.Id, [], status));
        }
        catch (Exception ex) when (ex is PosixException or ObjectDisposedException)
        {
            Fail($"answering the device failed: {ex.Message}");
        }
    }

    private static string DescribeReject(byte[] p) =>
        RejectMessage.TryDecode(p, out RejectMessage r) ? $"{r.Status}: {r.Reason}" : "(malformed REJECT)";

    // ---- the interrupt thread ------------------------------------------------------------------------

    private void InterruptLoop()
    {
        // Only the standard line: per-region vectors are waited on by the callers themselves.
        var polls = new Pollfd[2];
        polls[0] = new Pollfd { fd = Fd.Raw(_stop.Handle), events = PollEvents.POLLIN };
        polls[1] = new Pollfd { fd = Fd.Raw(_line.Handle), events = PollEvents.POLLIN };
        while (true)
        {
            int rc = Syscall.poll(polls, (uint)polls.Length, -1);
            if (rc < 0)
            {
                if (Stdlib.GetLastError() == Errno.EINTR) continue;
                return;
            }
            if ((polls[0].revents & PollEvents.POLLIN) != 0) return;
            if ((polls[1].revents & PollEvents.POLLIN) != 0 && _line.Drain() != 0)
                OnStandardInterrupt();
        }
    }

    private void OnStandardInterrupt()
    {
        lock (_irqLock)
        {
            _lineFirings++;
            Monitor.PulseAll(_irqLock); // waiters look at their rings now (see WaitQueue)
        }
        // As virtio_mmio's vm_interrupt: read InterruptStatus, acknowledge what was read, then
        // treat a used-buffer bit as a notification for every active queue. (A waiter that polls its
        // used ring asks the device for no interrupt meanwhile, and a sleeping one was woken above.)
        uint status;
        try
        {
            status = ReadRegister(MmioRegister.InterruptStatus);
            WriteRegister(MmioRegister.InterruptAck, status);
        }
        catch (DriverTransportException)
        {
            lock (_irqLock) Monitor.PulseAll(_irqLock);
            return;
        }
        lock (_irqLock)
        {
            if ((status & MmioRegister.InterruptUsedBuffer) != 0)
                Array.Fill(_queueSignalled, true);
            if ((status & MmioRegister.InterruptConfigChange) != 0)
                Interlocked.Increment(ref _configChanges);
            Monitor.PulseAll(_irqLock);
        }
    }

    // ---- lifetime ------------------------------------------------------------------------------------

    private void Fail(string reason)
    {
        Interlocked.CompareExchange(ref _failure, reason, null);
        foreach (TaskCompletionSource<(MmioHeader, byte[])> tcs in _pending.Values)
            tcs.TrySetException(new DriverTransportException(_failure!));
        lock (_irqLock) Monitor.PulseAll(_irqLock);
        foreach (EventFd v in _vectors) v.Signal(); // wakes WaitVector callers, which then throw (a no-op once closed)
        foreach (EventFd? c in _queueCalls) c?.Signal(); // and WaitQueue callers on call eventfds
    }

    private ulong WindowLength(ShmId id)
    {
        foreach (SharedMemoryWindow w in Hello.SharedMemory)
            if (w.Id == id) return w.Length;
        return 0;
    }

    private static ulong AlignUp(ulong value, ulong align) => (value + align - 1) & ~(align - 1);

    /// <summary>Closes the connection (the device sees the VMM leave), stops the threads and frees
    /// the windows, eventfds and (when created here) guest RAM.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Fail("the VMM client was disposed");
        _socket.Shutdown();
        _stop.Signal();
        if (_reader.IsAlive) _reader.Join();
        if (_interrupts.IsAlive) _interrupts.Join();
        _socket.Dispose();
        _regionsView?.Dispose();
        _line.Dispose();
        foreach (EventFd v in _vectors) v.Dispose();
        foreach (EventFd? bell in _doorbells.Values) bell?.Dispose();
        foreach (EventFd? call in _queueCalls) call?.Dispose();
        _stop.Dispose();
        if (_ownsRam) Ram.Dispose();
    }
}
