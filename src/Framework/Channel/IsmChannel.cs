using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Vism.Channel;

/// <summary>
/// One end of a vism channel: a full-duplex byte stream over one ISM region (a ring per direction,
/// docs/channel.md), with a message API (<see cref="SendAsync"/>/<see cref="ReceiveAsync"/>: a
/// little-endian u32 length before each message) on the same stream. One reader and one writer may
/// work at the same time; two concurrent readers (or writers) are not supported.
/// Reads return 0 (messages: -1) once the peer has closed and its data is drained; a peer that
/// stops (killed, detached without closing) makes every wait throw <see cref="ChannelPeerLostException"/>
/// within <see cref="ChannelOptions.PeerTimeout"/>.
/// </summary>
public sealed class IsmChannel : IDisposable, IAsyncDisposable
{
    private const int Read = 0, Write = 1;

    /// <summary>Large writes are published (and large reads consumed) in pieces of this size, so
    /// both sides copy at the same time.</summary>
    private const int Slice = 64 * 1024;

    private readonly ChannelDevice _device;
    private readonly nint _base;
    private readonly ulong _ringSize;
    private readonly nint _txData, _rxData;
    private readonly int _mySide, _peerSide;
    private readonly int _txProducer, _txConsumer, _rxProducer, _rxConsumer;
    private readonly SemaphoreSlim[] _signals = [new(0, 1), new(0, 1)];
    private long _spinTicks;
    private readonly long _gapQuietTicks;
    private bool _bulkRead; // the last stream read took at least a slice
    private volatile bool _poll;
    private long _txTail, _rxHead;
    private long _txHeadSeen;
    private uint _txNotified, _rxNotified, _myWaitSeqRead, _myWaitSeqWrite;
    private ulong _beats;
    private ulong _lastPeerBeat;
    private long _lastPeerChange;
    private volatile Exception? _failure;
    private volatile bool _closed;
    private bool _disposed;
    private ChannelStream? _stream;

    private unsafe IsmChannel(ChannelDevice device, ulong offset, ulong token, bool creator, ulong ringSize, ulong ring0, ulong ring1)
    {
        _device = device;
        Offset = offset;
        Token = token;
        IsCreator = creator;
        _base = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(device.Client.Region(offset, (int)device.Client.RegionSize)));
        _ringSize = ringSize;
        _txData = _base + (nint)(creator ? ring0 : ring1);
        _rxData = _base + (nint)(creator ? ring1 : ring0);
        _mySide = creator ? ChannelLayout.CreatorSide : ChannelLayout.AcceptorSide;
        _peerSide = creator ? ChannelLayout.AcceptorSide : ChannelLayout.CreatorSide;
        _txProducer = creator ? ChannelLayout.Ring0Producer : ChannelLayout.Ring1Producer;
        _txConsumer = creator ? ChannelLayout.Ring0Consumer : ChannelLayout.Ring1Consumer;
        _rxProducer = creator ? ChannelLayout.Ring1Producer : ChannelLayout.Ring0Producer;
        _rxConsumer = creator ? ChannelLayout.Ring1Consumer : ChannelLayout.Ring0Consumer;
        _poll = device.Options.WaitMode == ChannelWaitMode.Poll || !device.HasEvents;
        _spinTicks = (long)(device.Options.SpinTime.TotalSeconds * Stopwatch.Frequency);
        ReadGap = Math.Min(device.Options.ReadGap, (long)(ringSize / 2));
        _gapQuietTicks = Math.Max(1, (long)(device.Options.ReadGapQuiet.TotalSeconds * Stopwatch.Frequency));
        _lastPeerChange = Stopwatch.GetTimestamp();
        U32(_mySide + ChannelLayout.SideHeartbeatInterval) = (uint)Math.Max(1, device.Options.HeartbeatInterval.TotalMilliseconds);
    }

    /// <summary>The region's token.</summary>
    public ulong Token { get; }

    /// <summary>The region's offset in this device's REGIONS window.</summary>
    public ulong Offset { get; }

    /// <summary>Whether this side created the channel (ALLOCated the region).</summary>
    public bool IsCreator { get; }

    /// <summary>How this channel's reads and writes wait; starts as the device's
    /// <see cref="ChannelOptions.WaitMode"/> (always <see cref="ChannelWaitMode.Poll"/> on a device without events).</summary>
    /// <exception cref="InvalidOperationException">Setting <see cref="ChannelWaitMode.Event"/> on a device without events.</exception>
    public ChannelWaitMode WaitMode
    {
        get => _poll ? ChannelWaitMode.Poll : ChannelWaitMode.Event;
        set
        {
            if (value == ChannelWaitMode.Event && !_device.HasEvents)
                throw new InvalidOperationException("the device offers no update events (no eventq, no vector): its channels poll");
            _poll = value == ChannelWaitMode.Poll;
        }
    }

    /// <summary>In <see cref="ChannelWaitMode.Event"/> mode, how long a wait spins before it blocks;
    /// starts as the device's <see cref="ChannelOptions.SpinTime"/>.</summary>
    public TimeSpan SpinTime
    {
        get => TimeSpan.FromSeconds((double)Volatile.Read(ref _spinTicks) / Stopwatch.Frequency);
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, TimeSpan.Zero);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, TimeSpan.FromSeconds(1));
            Volatile.Write(ref _spinTicks, (long)(value.TotalSeconds * Stopwatch.Frequency));
        }
    }

    /// <summary>How far a bulk reader stays behind the writer: the device's
    /// <see cref="ChannelOptions.ReadGap"/>, at most half the ring.</summary>
    public long ReadGap { get; }

    /// <summary>Bytes each direction's ring holds.</summary>
    public long RingSize => (long)_ringSize;

    /// <summary>The peer's devid (0 while a creator waits for its peer).</summary>
    public ulong PeerDevId => Volatile.Read(ref U64(IsCreator ? ChannelLayout.AcceptorDevIdOffset : ChannelLayout.CreatorDevIdOffset));

    /// <summary>The channel as a <see cref="System.IO.Stream"/> (one per channel; disposing it disposes the channel).</summary>
    public Stream Stream => _stream ??= new ChannelStream(this);

    internal static unsafe IsmChannel Create(ChannelDevice device, ulong offset, ulong token, ulong regionSize, ulong expectedPeer)
    {
        ulong ring = ChannelLayout.RingSize(regionSize);
        var channel = new IsmChannel(device, offset, token, creator: true, ring, ChannelLayout.HeaderSize, ChannelLayout.HeaderSize + ring);
        Span<byte> header = new((void*)channel._base, ChannelLayout.HeaderSize);
        ChannelLayout.WriteHeader(header, regionSize, device.DevId, expectedPeer);
        Volatile.Write(ref channel.U32(channel._mySide + ChannelLayout.SideState), (uint)ChannelState.Open);
        Volatile.Write(ref channel.U64(ChannelLayout.MagicOffset), ChannelLayout.Magic);
        return channel;
    }

    internal static IsmChannel Join(ChannelDevice device, ulong offset, ulong token, ulong regionSize)
    {
        ReadOnlySpan<byte> header = device.Client.Region(offset, ChannelLayout.HeaderSize);
        (ulong ring, ulong ring0, ulong ring1) = ChannelLayout.ValidateHeader(header, regionSize);
        ulong expected = BinaryPrimitives.ReadUInt64LittleEndian(header[ChannelLayout.ExpectedPeerOffset..]);
        if (expected != 0 && expected != device.DevId)
            throw new ChannelException($"the channel was offered to devid {expected}; this device is devid {device.DevId}");
        if (BinaryPrimitives.ReadUInt32LittleEndian(header[(ChannelLayout.AcceptorSide + ChannelLayout.SideState)..]) != (uint)ChannelState.None)
            throw new ChannelException("the channel already has an acceptor");
        return new IsmChannel(device, offset, token, creator: false, ring, ring0, ring1);
    }

    /// <summary>The acceptor's join: its devid and state, then a notify to the creator.</summary>
    internal void Announce()
    {
        Volatile.Write(ref U64(ChannelLayout.AcceptorDevIdOffset), _device.DevId);
        Volatile.Write(ref U32(_mySide + ChannelLayout.SideState), (uint)ChannelState.Open);
        Interlocked.MemoryBarrier();
        _device.Notify(Offset);
    }

    internal async Task WaitJoinedAsync(CancellationToken cancellation)
    {
        while (PeerState == ChannelState.None)
        {
            ThrowIfFailed();
            if (_poll)
                await Task.Delay(1, cancellation).ConfigureAwait(false);
            else
                await _device.WaitSignalAsync(_signals[Read], cancellation).ConfigureAwait(false);
        }
        _lastPeerChange = Stopwatch.GetTimestamp();
    }

    // ---- the stream ----

    /// <summary>Reads what is available (waiting for at least one byte).</summary>
    /// <param name="buffer">Where to put the bytes.</param>
    /// <returns>Bytes read; 0 once the peer has closed and everything it wrote was read.</returns>
    /// <exception cref="ChannelPeerLostException">When the peer stopped.</exception>
    public int ReadSome(Span<byte> buffer)
    {
        if (buffer.IsEmpty) return 0;
        for (;;)
        {
            AwaitGap(buffer.Length, default);
            int n = TryRead(buffer, consume: true);
            if (n != 0) return TookRead(n);
            Wait(Read);
        }
    }

    /// <summary>Reads what is available (waiting for at least one byte).</summary>
    /// <param name="buffer">Where to put the bytes.</param>
    /// <param name="cancellation">Cancels the wait.</param>
    /// <returns>Bytes read; 0 once the peer has closed and everything it wrote was read.</returns>
    /// <exception cref="ChannelPeerLostException">When the peer stopped.</exception>
    public async ValueTask<int> ReadSomeAsync(Memory<byte> buffer, CancellationToken cancellation = default)
    {
        if (buffer.IsEmpty) return 0;
        for (;;)
        {
            AwaitGap(buffer.Length, cancellation);
            int n = TryRead(buffer.Span, consume: true);
            if (n != 0) return TookRead(n);
            await WaitAsync(Read, cancellation).ConfigureAwait(false);
        }
    }

    /// <summary>A stream read returned <paramref name="n"/> (-1: the end): remembers whether it
    /// was a bulk one, for the next read's <see cref="AwaitGap"/>.</summary>
    private int TookRead(int n)
    {
        _bulkRead = n >= Slice;
        return Math.Max(n, 0);
    }

    /// <summary>Before a bulk read (a buffer of at least a slice, after a read of at least a
    /// slice): while less than <see cref="ReadGap"/> is ready but something is, and the writer's
    /// cursor keeps moving, spin until the gap is ready, the cursor has stood still for
    /// <see cref="ChannelOptions.ReadGapQuiet"/>, or one quiet time and 1 ms have passed. Reading a slice
    /// the moment it is published means reading lines the writer's core has just written, at a
    /// third of the speed of lines written megabytes earlier.</summary>
    private void AwaitGap(int wanted, CancellationToken cancellation)
    {
        if (ReadGap == 0 || !_bulkRead || wanted < Slice)
            return;
        long ready = Available();
        if (ready <= 0 || ready >= ReadGap)
            return;
        long start = Stopwatch.GetTimestamp(), moved = start, limit = _gapQuietTicks + Stopwatch.Frequency / 1000;
        for (;;)
        {
            Thread.SpinWait(1);
            cancellation.ThrowIfCancellationRequested();
            long now = Available();
            if (now < 0 || now >= ReadGap || _failure is not null || _closed || PeerState == ChannelState.Closed)
                return;
            long t = Stopwatch.GetTimestamp();
            if (now != ready)
            {
                ready = now;
                moved = t;
            }
            else if (t - moved > _gapQuietTicks)
                return;
            if (t - start > limit)
                return;
        }
    }

    /// <summary>Writes all of <paramref name="data"/>, waiting while the ring is full.</summary>
    /// <param name="data">The bytes.</param>
    /// <exception cref="ChannelException">When the peer has closed the channel (it reads no more).</exception>
    /// <exception cref="ChannelPeerLostException">When the peer stopped.</exception>
    public void WriteAll(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            int n = TryWrite(data);
            data = data[n..];
            if (n == 0)
                Wait(Write);
        }
    }

    /// <summary>Writes all of <paramref name="data"/>, waiting while the ring is full.</summary>
    /// <param name="data">The bytes.</param>
    /// <param name="cancellation">Cancels the wait (part of the data may have been written).</param>
    /// <exception cref="ChannelException">When the peer has closed the channel (it reads no more).</exception>
    /// <exception cref="ChannelPeerLostException">When the peer stopped.</exception>
    public async ValueTask WriteAllAsync(ReadOnlyMemory<byte> data, CancellationToken cancellation = default)
    {
        while (!data.IsEmpty)
        {
            int n = TryWrite(data.Span);
            data = data[n..];
            if (n == 0)
                await WaitAsync(Write, cancellation).ConfigureAwait(false);
        }
    }

    // ---- messages ----

    /// <summary>Sends one message: its length (u32, little-endian) and its bytes, on the stream.</summary>
    /// <param name="message">The message.</param>
    /// <param name="cancellation">Cancels the wait.</param>
    public async ValueTask SendAsync(ReadOnlyMemory<byte> message, CancellationToken cancellation = default)
    {
        if (TryWriteFrame(message.Span))
            return;
        byte[] length = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, message.Length);
        await WriteAllAsync(length, cancellation).ConfigureAwait(false);
        await WriteAllAsync(message, cancellation).ConfigureAwait(false);
    }

    /// <summary>Sends one message (see <see cref="SendAsync"/>), blocking the calling thread while the ring is full.</summary>
    /// <param name="message">The message.</param>
    public void Send(ReadOnlySpan<byte> message)
    {
        if (TryWriteFrame(message))
            return;
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, message.Length);
        WriteAll(length);
        WriteAll(message);
    }

    /// <summary>Receives one message into <paramref name="buffer"/>.</summary>
    /// <param name="buffer">Room for the message.</param>
    /// <param name="cancellation">Cancels the wait.</param>
    /// <returns>The message's length; -1 when the peer closed (between messages).</returns>
    /// <exception cref="ArgumentException">When the next message is longer than <paramref name="buffer"/> (it stays unread).</exception>
    /// <exception cref="ChannelException">When the peer closed in the middle of a message.</exception>
    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellation = default)
    {
        int length;
        while ((length = TryPeekLength(buffer.Length)) == -2)
            await WaitAsync(Read, cancellation).ConfigureAwait(false);
        if (length < 0) return -1;
        if (TryTakeWhole(buffer.Span, length)) return length;
        Consume(4);
        for (int got = 0; got < length;)
        {
            int n = await ReadSomeAsync(buffer[got..length], cancellation).ConfigureAwait(false);
            if (n == 0) throw new ChannelException($"the peer closed the channel after {got} of a {length}-byte message");
            got += n;
        }
        return length;
    }

    /// <summary>Receives one message (see <see cref="ReceiveAsync"/>), blocking the calling thread.</summary>
    /// <param name="buffer">Room for the message.</param>
    /// <returns>The message's length; -1 when the peer closed (between messages).</returns>
    public int Receive(Span<byte> buffer)
    {
        int length;
        while ((length = TryPeekLength(buffer.Length)) == -2)
            Wait(Read);
        if (length < 0) return -1;
        if (TryTakeWhole(buffer, length)) return length;
        Consume(4);
        for (int got = 0; got < length;)
        {
            int n = ReadSome(buffer[got..length]);
            if (n == 0) throw new ChannelException($"the peer closed the channel after {got} of a {length}-byte message");
            got += n;
        }
        return length;
    }

    // ---- close ----

    /// <summary>Closes this side: everything written so far stays readable for the peer, which then
    /// reads the end of the stream; this side writes and reads no more. The peer is notified.</summary>
    public void Close()
    {
        if (_closed) return;
        _closed = true;
        Volatile.Write(ref U32(_mySide + ChannelLayout.SideState), (uint)ChannelState.Closed);
        Interlocked.MemoryBarrier();
        try
        {
            _device.Notify(Offset);
        }
        catch (Vism.Driver.DriverTransportException)
        {
        }
        Signal();
    }

    /// <summary>Closes this side (<see cref="Close"/>) and DETACHes the region.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Close();
        _device.Release(this);
    }

    /// <inheritdoc cref="Dispose"/>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    // ---- ring operations ----

    private unsafe ref ulong U64(int offset) => ref *(ulong*)(_base + offset);

    private unsafe ref uint U32(int offset) => ref *(uint*)(_base + offset);

    private ChannelState PeerState => (ChannelState)Volatile.Read(ref U32(_peerSide + ChannelLayout.SideState));

    /// <summary>Bytes the peer has published and this side not read; -1 after a protocol violation.</summary>
    private long Available()
    {
        ulong avail = Volatile.Read(ref U64(_rxProducer + ChannelLayout.LineCursor)) - (ulong)_rxHead;
        if (avail > _ringSize)
        {
            Fail(new ChannelException($"the peer broke the protocol: its write cursor is {avail} bytes ahead of this side's read cursor in a {_ringSize}-byte ring"));
            return -1;
        }
        return (long)avail;
    }

    /// <summary>Room in the transmit ring: at least <paramref name="wanted"/> bytes from the head
    /// this side last read, else the peer's head is read again. The head line is the consumer's: a
    /// writer that reads it at every message takes the line from the consumer each time, and the
    /// consumer's next head store has to take it back (a cache-line transfer on the round trip).</summary>
    private long Free(long wanted = 1)
    {
        long known = (long)_ringSize - (_txTail - _txHeadSeen);
        if (known >= wanted)
            return known;
        ulong head = Volatile.Read(ref U64(_txConsumer + ChannelLayout.LineCursor));
        ulong used = (ulong)_txTail - head;
        if (used > _ringSize)
        {
            Fail(new ChannelException($"the peer broke the protocol: its read cursor is {unchecked(0 - used)} bytes ahead of this side's write cursor"));
            return -1;
        }
        _txHeadSeen = (long)head;
        return (long)(_ringSize - used);
    }

    /// <summary>Copies available bytes out; returns the count, 0 when none yet, -1 at the end.</summary>
    private int TryRead(Span<byte> buffer, bool consume)
    {
        ThrowIfFailed();
        ObjectDisposedException.ThrowIf(_closed, this);
        long avail = Available();
        if (avail == 0 && PeerState == ChannelState.Closed)
        {
            avail = Available(); // everything written before the close is visible now
            if (avail == 0) return -1;
        }
        ThrowIfFailed();
        int n = (int)Math.Min(avail, buffer.Length);
        if (n == 0) return 0;
        if (!consume)
        {
            Copy(_rxData, (ulong)_rxHead, buffer[..n]);
            return n;
        }
        // Consumed in slices: the writer gets room while this side still copies.
        for (int at = 0; at < n; at += Slice)
        {
            int part = Math.Min(Slice, n - at);
            Copy(_rxData, (ulong)_rxHead, buffer.Slice(at, part));
            Consume(part);
        }
        return n;
    }

    private void Consume(int n)
    {
        _rxHead += n;
        PublishCursor(_rxConsumer, _rxHead, _rxProducer, ref _rxNotified);
    }

    /// <summary>Stores this side's cursor in its line, then (after a full fence, so the peer either
    /// sees the cursor before it blocks or has announced its wait by now) notifies once per wait the
    /// peer announced on <paramref name="peerLine"/>.</summary>
    private void PublishCursor(int line, long cursor, int peerLine, ref uint notified)
    {
        Volatile.Write(ref U64(line + ChannelLayout.LineCursor), (ulong)cursor);
        Interlocked.MemoryBarrier();
        uint seq = Volatile.Read(ref U32(peerLine + ChannelLayout.LineWaitSeq));
        if (seq != notified)
        {
            notified = seq;
            _device.Notify(Offset);
        }
    }

    /// <summary>When the whole message (length + <paramref name="length"/> bytes) is in the ring,
    /// copies it out and consumes it with one cursor update (one notify at most).</summary>
    private bool TryTakeWhole(Span<byte> buffer, int length)
    {
        if (Available() < 4L + length) return false;
        Copy(_rxData, (ulong)_rxHead + 4, buffer[..length]);
        Consume(4 + length);
        return true;
    }

    /// <summary>The next message's length: -2 when its length is not there yet, -1 at the end.</summary>
    private int TryPeekLength(int room)
    {
        Span<byte> length = stackalloc byte[4];
        ThrowIfFailed();
        ObjectDisposedException.ThrowIf(_closed, this);
        long avail = Available();
        if (avail < 4)
        {
            if (PeerState != ChannelState.Closed) return -2;
            avail = Available();
            if (avail == 0) return -1;
            if (avail < 4) throw new ChannelException($"the peer closed the channel after {avail} bytes of a message length");
        }
        Copy(_rxData, (ulong)_rxHead, length);
        int value = BinaryPrimitives.ReadInt32LittleEndian(length);
        if (value < 0)
            throw new ChannelException($"the peer sent a message length of {value}");
        if (value > room)
            throw new ArgumentException($"the next message is {value} bytes; the buffer holds {room}", "buffer");
        return value;
    }

    private int TryWrite(ReadOnlySpan<byte> data)
    {
        ThrowIfWritable();
        long free = Free(Math.Min(data.Length, (long)_ringSize));
        ThrowIfFailed();
        int n = (int)Math.Min(free, data.Length);
        // Published in slices: the reader copies one slice out while this side copies the next in.
        for (int at = 0; at < n; at += Slice)
            Publish(data[at..Math.Min(n, at + Slice)]);
        return n;
    }

    /// <summary>Writes length + message at once when the ring has room for both (one publish, one
    /// notify at most: the 64-byte request/response path).</summary>
    private bool TryWriteFrame(ReadOnlySpan<byte> message)
    {
        ThrowIfWritable();
        long free = Free(4L + message.Length);
        ThrowIfFailed();
        if (free < 4L + message.Length) return false;
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, message.Length);
        Copy(length, _txData, (ulong)_txTail);
        Copy(message, _txData, (ulong)_txTail + 4);
        Advance(4 + message.Length);
        return true;
    }

    private void Publish(ReadOnlySpan<byte> data)
    {
        Copy(data, _txData, (ulong)_txTail);
        Advance(data.Length);
    }

    private void Advance(int n)
    {
        _txTail += n;
        PublishCursor(_txProducer, _txTail, _txConsumer, ref _txNotified);
    }

    private unsafe void Copy(nint ring, ulong cursor, Span<byte> destination)
    {
        ulong at = cursor % _ringSize;
        int first = (int)Math.Min((ulong)destination.Length, _ringSize - at);
        new ReadOnlySpan<byte>((void*)(ring + (nint)at), first).CopyTo(destination);
        new ReadOnlySpan<byte>((void*)ring, destination.Length - first).CopyTo(destination[first..]);
    }

    private unsafe void Copy(ReadOnlySpan<byte> source, nint ring, ulong cursor)
    {
        ulong at = cursor % _ringSize;
        int first = (int)Math.Min((ulong)source.Length, _ringSize - at);
        source[..first].CopyTo(new Span<byte>((void*)(ring + (nint)at), first));
        source[first..].CopyTo(new Span<byte>((void*)ring, source.Length - first));
    }

    private void ThrowIfWritable()
    {
        ThrowIfFailed();
        ObjectDisposedException.ThrowIf(_closed, this);
        if (PeerState == ChannelState.Closed)
            throw new ChannelException("the peer closed the channel; it reads no more");
    }

    private void ThrowIfFailed()
    {
        if (_failure is { } f)
        {
            if (f is ChannelException or ObjectDisposedException) throw f is ChannelPeerLostException lost ? new ChannelPeerLostException(lost.Message) : f;
            throw new ChannelException(f.Message, f);
        }
    }

    /// <summary>Whether a wait in <paramref name="direction"/> can end: data (room), the peer's close, or a failure.</summary>
    private bool Ready(int direction) =>
        _failure is not null || _closed || PeerState == ChannelState.Closed || (direction == Read ? Available() != 0 : Free() != 0);

    /// <summary>A blocking wait until <see cref="Ready"/>: spins (for ever when polling), then
    /// announces the wait and takes the device's events on this thread (see
    /// <see cref="ChannelDevice.WaitForEvent"/>) until the peer's notify or a heartbeat tick.</summary>
    private void Wait(int direction)
    {
        if (Spin(direction, default) || Announce(direction))
            return;
        _device.WaitForEvent(this, _signals[direction]);
    }

    /// <summary>The async wait: as <see cref="Wait"/>, but blocks on this channel's signal, which
    /// whoever takes the device's events sets.</summary>
    private async ValueTask WaitAsync(int direction, CancellationToken cancellation)
    {
        if (Spin(direction, cancellation) || Announce(direction))
            return;
        await _device.WaitSignalAsync(_signals[direction], cancellation).ConfigureAwait(false);
    }

    /// <summary>Spins until <see cref="Ready"/> (for ever when polling, else for the spin time).</summary>
    /// <returns>Whether the channel became ready.</returns>
    private bool Spin(int direction, CancellationToken cancellation)
    {
        long start = Stopwatch.GetTimestamp();
        while (_poll || Stopwatch.GetTimestamp() - start < _spinTicks)
        {
            if (Ready(direction)) return true;
            cancellation.ThrowIfCancellationRequested();
            // No sched_yield: on a busy machine it hands the core to another task for a whole slice.
            Thread.SpinWait(1);
        }
        return false;
    }

    /// <summary>Announces a wait (bumps this side's wait sequence: the peer notifies once for it),
    /// full fence, and re-checks.</summary>
    /// <returns>Whether the channel became ready meanwhile.</returns>
    private bool Announce(int direction)
    {
        int line = direction == Read ? _rxConsumer : _txProducer;
        uint seq = direction == Read ? ++_myWaitSeqRead : ++_myWaitSeqWrite;
        Volatile.Write(ref U32(line + ChannelLayout.LineWaitSeq), seq);
        Interlocked.MemoryBarrier();
        return Ready(direction);
    }

    /// <summary>An update event for this region arrived: wake the waiters (they re-check), except
    /// <paramref name="except"/> (the wait of the thread that took the event).</summary>
    internal void Signal(SemaphoreSlim? except = null)
    {
        foreach (SemaphoreSlim s in _signals)
            if (s != except)
                SetSignal(s);
    }

    /// <summary>Sets a 0/1 signal (a <see cref="SemaphoreSlim"/> with maximum 1) unless it is set already.</summary>
    internal static void SetSignal(SemaphoreSlim signal)
    {
        if (signal.CurrentCount != 0)
            return;
        try { signal.Release(); } catch (SemaphoreFullException) { } // set meanwhile by another thread
    }

    /// <summary>The channel failed; every wait ends and every later call throws.</summary>
    internal void Fail(Exception failure)
    {
        _failure ??= failure;
        Signal();
    }

    /// <summary>A heartbeat tick (on the device's event thread): bump this side's counter, and
    /// declare the peer lost when its counter has not moved for the peer timeout.</summary>
    internal void Beat(long now)
    {
        if (_closed || _failure is not null) return;
        Volatile.Write(ref U64(_mySide + ChannelLayout.SideHeartbeat), ++_beats);
        if (PeerState != ChannelState.Open) return;
        ulong peerBeat = Volatile.Read(ref U64(_peerSide + ChannelLayout.SideHeartbeat));
        if (peerBeat != _lastPeerBeat)
        {
            _lastPeerBeat = peerBeat;
            _lastPeerChange = now;
            return;
        }
        uint peerInterval = Math.Clamp(Volatile.Read(ref U32(_peerSide + ChannelLayout.SideHeartbeatInterval)), 1u, 60_000u);
        TimeSpan timeout = TimeSpan.FromMilliseconds(Math.Max(_device.Options.PeerTimeout.TotalMilliseconds, 4.0 * peerInterval));
        TimeSpan silent = Stopwatch.GetElapsedTime(_lastPeerChange, now);
        if (silent > timeout)
            Fail(new ChannelPeerLostException($"the peer (devid {PeerDevId}) stopped: its heartbeat has not moved for {silent.TotalMilliseconds:F0} ms (timeout {timeout.TotalMilliseconds:F0} ms)"));
    }
}
