using System.Buffers.Binary;
using Vism.Abstractions;

namespace Vism.Driver;

/// <summary>Choices an <see cref="IsmClient"/> makes as a driver.</summary>
public sealed record IsmClientOptions
{
    /// <summary>Accept VIRTIO_ISM_F_EVENT_VQ when offered (and keep eventq buffers posted).</summary>
    public bool EventVq { get; init; } = true;

    /// <summary>Accept VIRTIO_ISM_F_EVENT_IRQ when offered.</summary>
    public bool EventIrq { get; init; } = true;

    /// <summary>Accept VIRTIO_F_EVENT_IDX when offered.</summary>
    public bool EventIdx { get; init; } = true;

    /// <summary>Accept VIRTIO_F_INDIRECT_DESC when offered.</summary>
    public bool IndirectDesc { get; init; } = true;

    /// <summary>Send control requests through an indirect table (needs <see cref="IndirectDesc"/> negotiated).</summary>
    public bool UseIndirect { get; init; }

    /// <summary>Preferred queue size.</summary>
    public ushort QueueSize { get; init; } = 64;

    /// <summary>Buffers kept posted on the eventq.</summary>
    public int EventBuffers { get; init; } = 16;

    /// <summary>Post the eventq buffers when the client starts. False leaves them with the driver
    /// until <see cref="IsmClient.PostEventBuffers"/> (a driver slow to give the device buffers).</summary>
    public bool PostEventBuffers { get; init; } = true;

    /// <summary>Bytes per eventq buffer (<c>le64 num</c> + 8 bytes per offset).</summary>
    public uint EventBufferSize { get; init; } = 8 + 8 * 63;

    /// <summary>How long <see cref="IsmClient.WaitEvent(Span{ulong}, TimeSpan)"/> and
    /// <see cref="IsmClient.WaitVector"/> poll (the used ring, the vector's eventfd) before they sleep
    /// on the interrupt: an event that comes within this time costs no wake-up. Spinning yields the
    /// core now and then, so a thread sharing it still runs. Zero blocks at once.</summary>
    public TimeSpan SpinBeforeBlock { get; init; } = TimeSpan.FromMicroseconds(50);

    /// <summary>How long a control request may take.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>The result of a raw control request.</summary>
/// <param name="Ack">The ack byte (0 OK, 1 ERR), or 0xff when the device wrote nothing.</param>
/// <param name="Written">Bytes the device reported written.</param>
/// <param name="Reply">The reply bytes after the ack (as many as were asked for).</param>
public sealed record ControlResult(byte Ack, uint Written, byte[] Reply)
{
    /// <summary>Whether the ack is VIRTIO_ISM_OK.</summary>
    public bool Ok => Ack == IsmControl.AckOk && Written >= 1;
}

/// <summary>ALLOC's answer.</summary>
/// <param name="Ack">The ack byte.</param>
/// <param name="Token">The new region's token (valid when <see cref="Ok"/>).</param>
/// <param name="Offset">Its offset in the REGIONS window.</param>
public readonly record struct AllocReply(byte Ack, ulong Token, ulong Offset)
{
    /// <summary>Whether the ack is VIRTIO_ISM_OK.</summary>
    public bool Ok => Ack == IsmControl.AckOk;
}

/// <summary>ATTACH's answer.</summary>
/// <param name="Ack">The ack byte.</param>
/// <param name="Offset">The region's offset in the REGIONS window (valid when <see cref="Ok"/>).</param>
public readonly record struct AttachReply(byte Ack, ulong Offset)
{
    /// <summary>Whether the ack is VIRTIO_ISM_OK.</summary>
    public bool Ok => Ack == IsmControl.AckOk;
}

/// <summary>
/// An ISM driver in user space over any <see cref="IDriverTransport"/>: starts the device, reads its
/// config, sends typed control requests, reads and writes regions through the driver-side REGIONS
/// window, notifies through the NOTIFY window and receives update events (eventq or per-region
/// vectors). Control requests are serialised; <see cref="WaitEvent(TimeSpan)"/> may run on another thread.
/// </summary>
public sealed class IsmClient : IDisposable
{
    private readonly IsmClientOptions _options;
    private readonly Lock _controlLock = new();
    private readonly Lock _eventLock = new();
    private readonly ulong _request;
    private readonly ulong _response;
    private readonly ulong[] _eventBuffers = [];
    private readonly Dictionary<ushort, int> _eventByHead = new();
    private readonly Stack<int> _idleEventBuffers = new();
    private readonly Dictionary<ulong, int> _vectorOf = new();

    private IsmClient(IDriverTransport transport, VirtioDriver driver, IsmClientOptions options)
    {
        Transport = transport;
        Driver = driver;
        _options = options;
        Gid = driver.ReadConfigUInt64(0);
        DevId = driver.ReadConfigUInt64(8);
        RegionSize = driver.ReadConfigUInt64(16);
        NotifySize = driver.ReadConfigUInt64(24);
        // v1: "The driver MUST query all shared memory regions supported by the device." They are
        // fixed for the device's lifetime, so once here (over MMIO each query is a round trip).
        RegionsWindowLength = transport.ShmLength(ShmId.Regions);
        NotifyWindowLength = transport.ShmLength(ShmId.Notify);
        _request = transport.Ram.Allocate(64, 16);
        _response = transport.Ram.Allocate(64, 16);
        if (driver.Has(Features.IsmEventVq))
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.EventBuffers);
            ArgumentOutOfRangeException.ThrowIfLessThan(options.EventBufferSize, 8u);
            _eventBuffers = new ulong[options.EventBuffers];
            for (int i = _eventBuffers.Length - 1; i >= 0; i--)
            {
                _eventBuffers[i] = transport.Ram.Allocate(options.EventBufferSize, 8);
                _idleEventBuffers.Push(i);
            }
            if (options.PostEventBuffers)
                PostEventBuffers();
        }
    }

    /// <summary>Starts the device behind <paramref name="transport"/> as an ISM driver.</summary>
    /// <param name="transport">The transport.</param>
    /// <param name="options">Driver choices; defaults when null.</param>
    /// <returns>The client.</returns>
    public static IsmClient Start(IDriverTransport transport, IsmClientOptions? options = null)
    {
        options ??= new IsmClientOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(options.EventBufferSize, 16u, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.EventBuffers, 1, nameof(options));
        ulong wanted = Features.Mask(Features.Version1);
        if (options.EventVq) wanted |= Features.Mask(Features.IsmEventVq);
        if (options.EventIrq) wanted |= Features.Mask(Features.IsmEventIrq);
        if (options.EventIdx) wanted |= Features.Mask(Features.RingEventIdx);
        if (options.IndirectDesc) wanted |= Features.Mask(Features.RingIndirectDesc);
        VirtioDriver driver = VirtioDriver.Start(transport, wanted,
            f => Features.Has(f, Features.IsmEventVq) ? 2 : 1, options.QueueSize);
        return new IsmClient(transport, driver, options);
    }

    /// <summary>The transport.</summary>
    public IDriverTransport Transport { get; }

    /// <summary>The virtio driver core (negotiated features, queues).</summary>
    public VirtioDriver Driver { get; }

    /// <summary>Config <c>gid</c>.</summary>
    public ulong Gid { get; }

    /// <summary>Config <c>devid</c>.</summary>
    public ulong DevId { get; }

    /// <summary>Config <c>region_size</c>.</summary>
    public ulong RegionSize { get; }

    /// <summary>Config <c>notify_size</c>.</summary>
    public ulong NotifySize { get; }

    /// <summary>Length of the REGIONS window (shmid 1), queried once at start; 0 when absent.</summary>
    public ulong RegionsWindowLength { get; }

    /// <summary>Length of the NOTIFY window (shmid 2), queried once at start; 0 when absent.</summary>
    public ulong NotifyWindowLength { get; }

    /// <summary>Sends one control request as given (any class, command and payload) and waits for it.</summary>
    /// <param name="cls">Class byte.</param>
    /// <param name="command">Command byte.</param>
    /// <param name="payload">Command-specific data (at most 48 bytes).</param>
    /// <param name="replyLength">Device-writable bytes after the ack (at most 48).</param>
    /// <param name="ackSpace">Whether to give the device room for the ack at all.</param>
    /// <returns>The ack and reply.</returns>
    /// <exception cref="DriverTransportException">On timeout or a device that misbehaves.</exception>
    public ControlResult Send(byte cls, byte command, ReadOnlySpan<byte> payload, int replyLength, bool ackSpace = true)
    {
        if (payload.Length > 48 || replyLength is < 0 or > 48)
            throw new ArgumentOutOfRangeException(nameof(payload), "payload and reply are limited to 48 bytes");
        lock (_controlLock)
        {
            GuestRam ram = Transport.Ram;
            Span<byte> req = ram.Span(_request, 2 + payload.Length);
            req[0] = cls;
            req[1] = command;
            payload.CopyTo(req[2..]);
            int responseLength = ackSpace ? 1 + replyLength : 0;
            Span<byte> resp = ram.Span(_response, 1 + replyLength);
            resp.Fill(0xff);
            DriverBuffer[] writable = responseLength > 0 ? [new DriverBuffer(_response, (uint)responseLength)] : [];
            DriverQueue q = Driver.Queues[Virtio.ControlQueue];
            ushort head = q.Add([new DriverBuffer(_request, (uint)req.Length)], writable, _options.UseIndirect && q.MaxIndirect > 0);
            Driver.KickIfNeeded(Virtio.ControlQueue);
            if (!Driver.WaitUsed(Virtio.ControlQueue, _options.Timeout, out UsedElement used))
                throw new DriverTransportException($"control request class {cls} command {command}: no answer within {_options.Timeout}");
            if (used.Head != head)
                throw new DriverTransportException($"control request: the device returned head {used.Head}, {head} was outstanding");
            resp = ram.Span(_response, 1 + replyLength);
            byte ack = used.Written >= 1 ? resp[0] : (byte)0xff;
            return new ControlResult(ack, used.Written, resp[1..].ToArray());
        }
    }

    /// <summary>ALLOC: a region of <paramref name="size"/> bytes.</summary>
    /// <param name="size">Bytes (at most <see cref="RegionSize"/>).</param>
    /// <returns>Ack, token and offset.</returns>
    public AllocReply Alloc(ulong size)
    {
        Span<byte> data = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(data, size);
        ControlResult r = Send(IsmControl.ClassAlloc, IsmControl.CommandDefault, data, 16);
        return r.Ok
            ? new AllocReply(r.Ack, BinaryPrimitives.ReadUInt64LittleEndian(r.Reply), BinaryPrimitives.ReadUInt64LittleEndian(r.Reply.AsSpan(8)))
            : new AllocReply(r.Ack, 0, 0);
    }

    /// <summary>ATTACH: the region with <paramref name="token"/>.</summary>
    /// <param name="token">A token from another device's ALLOC.</param>
    /// <returns>Ack and offset.</returns>
    public AttachReply Attach(ulong token)
    {
        Span<byte> data = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(data, token);
        ControlResult r = Send(IsmControl.ClassAttach, IsmControl.CommandDefault, data, 8);
        return new AttachReply(r.Ack, r.Ok ? BinaryPrimitives.ReadUInt64LittleEndian(r.Reply) : 0);
    }

    /// <summary>DETACH: drops the region at <paramref name="offset"/>.</summary>
    /// <param name="offset">The region's offset.</param>
    /// <returns>The ack byte.</returns>
    public byte Detach(ulong offset)
    {
        Span<byte> data = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(data, offset);
        byte ack = Send(IsmControl.ClassDetach, IsmControl.CommandDefault, data, 0).Ack;
        if (ack == IsmControl.AckOk)
            lock (_vectorOf)
                _vectorOf.Remove(offset);
        return ack;
    }

    /// <summary>GRANT: sets the permissions of <paramref name="peerDevId"/> (0: the default entry).</summary>
    /// <param name="offset">The region's offset.</param>
    /// <param name="peerDevId">A devid, or 0.</param>
    /// <param name="permissions">The permission bits.</param>
    /// <returns>The ack byte.</returns>
    public byte Grant(ulong offset, ulong peerDevId, IsmPermissions permissions)
    {
        Span<byte> data = stackalloc byte[24];
        BinaryPrimitives.WriteUInt64LittleEndian(data, offset);
        BinaryPrimitives.WriteUInt64LittleEndian(data[8..], peerDevId);
        BinaryPrimitives.WriteUInt64LittleEndian(data[16..], (ulong)permissions);
        return Send(IsmControl.ClassGrant, IsmControl.CommandDefault, data, 0).Ack;
    }

    /// <summary>EVENT_VECTOR: binds the region at <paramref name="offset"/> to <paramref name="vector"/>.</summary>
    /// <param name="offset">The region's offset.</param>
    /// <param name="vector">The vector.</param>
    /// <returns>The ack byte.</returns>
    public byte EventVector(ulong offset, ulong vector)
    {
        Span<byte> data = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(data, offset);
        BinaryPrimitives.WriteUInt64LittleEndian(data[8..], vector);
        byte ack = Send(IsmControl.ClassEventVector, IsmControl.CommandDefault, data, 0).Ack;
        if (ack == IsmControl.AckOk && vector < int.MaxValue)
            lock (_vectorOf)
                _vectorOf[offset] = (int)vector;
        return ack;
    }

    /// <summary>The regions this client bound to <paramref name="vector"/> with <see cref="EventVector"/>
    /// and has not detached since, in offset order: what a driver checks when the vector fires.</summary>
    /// <param name="vector">A vector.</param>
    /// <returns>Their offsets.</returns>
    public IReadOnlyList<ulong> RegionsOnVector(int vector)
    {
        lock (_vectorOf)
            return [.. _vectorOf.Where(kv => kv.Value == vector).Select(kv => kv.Key).Order()];
    }

    /// <summary>The driver's view of region memory: <paramref name="length"/> bytes at
    /// <paramref name="offset"/> of the REGIONS window. Only ranges of attached regions are backed.</summary>
    /// <param name="offset">Offset in the REGIONS window.</param>
    /// <param name="length">Bytes.</param>
    /// <returns>A span over the window.</returns>
    public unsafe Span<byte> Region(ulong offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ulong window = RegionsWindowLength;
        if (offset > window || (ulong)length > window - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[0x{offset:x}, +{length}) is outside the {window}-byte REGIONS window");
        nint baseAddress = Transport.ShmAddress(ShmId.Regions);
        if (baseAddress == 0)
            throw new InvalidOperationException("the transport has no driver-side REGIONS window");
        return new Span<byte>((void*)(baseAddress + (nint)offset), length);
    }

    /// <summary>Writes the notify slot of the region at <paramref name="offset"/>: every other
    /// device referencing it gets an update event.</summary>
    /// <param name="offset">The region's offset.</param>
    /// <remarks>Goes through <see cref="IDriverTransport.Notify"/>: on vhost-user the store changes the
    /// slot's value (the device compares the polled window against its last snapshot, so rewriting the
    /// value already there would go unseen) and vism's frontend rings its doorbell.</remarks>
    public void Notify(ulong offset) => Transport.Notify(offset / RegionSize * NotifySize);

    /// <summary>Waits for the next eventq buffer and returns the region offsets it reports
    /// (<c>struct virtio_ism_event</c>), re-posting the buffer.</summary>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>The offsets, or null on timeout.</returns>
    /// <exception cref="InvalidOperationException">When VIRTIO_ISM_F_EVENT_VQ was not negotiated.</exception>
    public IReadOnlyList<ulong>? WaitEvent(TimeSpan timeout)
    {
        RequireEventq();
        lock (_eventLock)
        {
            if (!Driver.WaitUsed(Virtio.EventQueue, timeout, _options.SpinBeforeBlock, out UsedElement used))
                return null;
            return TakeEvent(used);
        }
    }

    /// <summary>Waits for the next eventq buffer (polling for <see cref="IsmClientOptions.SpinBeforeBlock"/>
    /// first), copies the region offsets it reports into <paramref name="offsets"/> and re-posts the
    /// buffer. Allocates nothing: the call a driver makes in its event loop.</summary>
    /// <param name="offsets">Where the offsets go; offsets beyond its length are dropped (size it for
    /// <see cref="IsmClientOptions.EventBufferSize"/>: (size - 8) / 8 offsets).</param>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>The number of offsets the event reported (may exceed the span's length), or -1 on timeout.</returns>
    /// <exception cref="InvalidOperationException">When VIRTIO_ISM_F_EVENT_VQ was not negotiated.</exception>
    public int WaitEvent(Span<ulong> offsets, TimeSpan timeout)
    {
        RequireEventq();
        lock (_eventLock)
        {
            if (!Driver.WaitUsed(Virtio.EventQueue, timeout, _options.SpinBeforeBlock, out UsedElement used))
                return -1;
            return TakeEvent(used, offsets);
        }
    }

    /// <summary>Takes every eventq buffer the device has returned so far, without waiting, and
    /// re-posts them (a driver's poll after an interrupt).</summary>
    /// <returns>The offsets of all those buffers, in delivery order (empty when there were none).</returns>
    /// <exception cref="InvalidOperationException">When VIRTIO_ISM_F_EVENT_VQ was not negotiated.</exception>
    public IReadOnlyList<ulong> DrainEvents()
    {
        RequireEventq();
        lock (_eventLock)
        {
            var offsets = new List<ulong>();
            while (Driver.Queues[Virtio.EventQueue].TryTakeUsed(out UsedElement used))
                offsets.AddRange(TakeEvent(used));
            return offsets;
        }
    }

    /// <summary>Posts every eventq buffer the driver holds (all of them at start unless
    /// <see cref="IsmClientOptions.PostEventBuffers"/> is false) and kicks the eventq if the device
    /// asks for it.</summary>
    /// <returns>How many buffers were posted.</returns>
    /// <exception cref="InvalidOperationException">When VIRTIO_ISM_F_EVENT_VQ was not negotiated.</exception>
    public int PostEventBuffers()
    {
        RequireEventq();
        lock (_eventLock)
        {
            int posted = 0;
            while (_idleEventBuffers.TryPop(out int buffer))
            {
                PostEventBuffer(buffer);
                posted++;
            }
            if (posted > 0)
                Driver.KickIfNeeded(Virtio.EventQueue);
            return posted;
        }
    }

    /// <summary>Waits for per-region vector <paramref name="vector"/> (VIRTIO_ISM_F_EVENT_IRQ).</summary>
    /// <param name="vector">The vector.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>Whether it fired.</returns>
    public bool WaitVector(int vector, TimeSpan timeout) => Transport.WaitVector(vector, timeout, _options.SpinBeforeBlock);

    /// <summary>Waits for <paramref name="vector"/> to fire and returns the regions bound to it,
    /// which a driver must then check (several regions may share a vector).</summary>
    /// <param name="vector">The vector.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>The offsets bound to the vector (see <see cref="RegionsOnVector"/>), or null on timeout.</returns>
    public IReadOnlyList<ulong>? WaitVectorEvent(int vector, TimeSpan timeout) =>
        Transport.WaitVector(vector, timeout, _options.SpinBeforeBlock) ? RegionsOnVector(vector) : null;

    private void RequireEventq()
    {
        if (!Driver.Has(Features.IsmEventVq))
            throw new InvalidOperationException("VIRTIO_ISM_F_EVENT_VQ was not negotiated");
    }

    /// <summary>Region offsets one eventq buffer holds (<see cref="IsmClientOptions.EventBufferSize"/>
    /// less the 8-byte <c>num</c>, over 8): size the span given to <see cref="WaitEvent(Span{ulong}, TimeSpan)"/> with it.</summary>
    public int EventCapacity => (int)((_options.EventBufferSize - 8) / 8);

    /// <summary>Parses a returned event buffer and re-posts it (also when it was malformed).</summary>
    private ulong[] TakeEvent(UsedElement used)
    {
        int capacity = EventCapacity;
        Span<ulong> offsets = capacity <= 128 ? stackalloc ulong[capacity] : new ulong[capacity];
        int n = TakeEvent(used, offsets);
        return offsets[..n].ToArray();
    }

    /// <summary>Parses a returned event buffer into <paramref name="offsets"/> (as many as fit) and
    /// re-posts it (also when it was malformed).</summary>
    /// <returns>The event's <c>num</c>.</returns>
    private int TakeEvent(UsedElement used, Span<ulong> offsets)
    {
        if (!_eventByHead.Remove(used.Head, out int buffer))
            throw new DriverTransportException($"eventq: the device returned head {used.Head}, which is not an event buffer");
        try
        {
            ReadOnlySpan<byte> record = Transport.Ram.Span(_eventBuffers[buffer], (int)_options.EventBufferSize);
            if (used.Written < 8)
                throw new DriverTransportException($"eventq: the device wrote {used.Written} bytes, less than the 8-byte num");
            ulong num = BinaryPrimitives.ReadUInt64LittleEndian(record);
            ulong fits = (Math.Min(used.Written, (uint)record.Length) - 8) / 8;
            if (num > fits)
                throw new DriverTransportException($"eventq: num {num} but only {fits} offsets were written");
            int copy = (int)Math.Min(num, (ulong)offsets.Length);
            for (int i = 0; i < copy; i++)
                offsets[i] = BinaryPrimitives.ReadUInt64LittleEndian(record[(8 + 8 * i)..]);
            return (int)num;
        }
        finally
        {
            PostEventBuffer(buffer);
            Driver.KickIfNeeded(Virtio.EventQueue);
        }
    }

    private void PostEventBuffer(int i)
    {
        ushort head = Driver.Queues[Virtio.EventQueue].Add([], [new DriverBuffer(_eventBuffers[i], _options.EventBufferSize)]);
        _eventByHead[head] = i;
    }

    /// <summary>Resets the device (releasing every region it references) and disposes the transport.</summary>
    public void Dispose()
    {
        try
        {
            Transport.WriteStatus(DeviceStatus.Reset);
        }
        catch (DriverTransportException)
        {
        }
        Transport.Dispose();
    }
}
