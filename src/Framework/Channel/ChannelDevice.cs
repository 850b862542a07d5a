using System.Collections.Concurrent;
using System.Diagnostics;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;

namespace Vism.Channel;

/// <summary>
/// Channels over one ISM device: creates (<see cref="ListenAsync"/>) and joins
/// (<see cref="ConnectAsync"/>) channels through an <see cref="IsmClient"/>. A blocking wait on a
/// channel takes the device's update events itself (the client's spin-then-block wait, no other
/// thread in between) and passes on those for other channels; one thread bumps every channel's
/// heartbeat, declares silent peers lost and takes the events while only async waits are pending.
/// docs/channel.md describes the protocol.
/// </summary>
public sealed class ChannelDevice : IDisposable
{
    private readonly ConcurrentDictionary<ulong, IsmChannel> _channels = new();
    private readonly IDisposable? _owned;
    private readonly Thread _pump;
    private readonly Lock _notifyLock = new();
    /// <summary>Held by the one thread that takes the device's events right now: a channel's
    /// blocking wait (the reader or writer itself, no hand-over) or the pump, for async waits.</summary>
    private readonly Lock _taker = new();
    private readonly ulong[] _offsets; // one eventq buffer's worth
    private readonly SemaphoreSlim _pumpWake = new(0, 1);
    private int _blockedWaiters, _asyncWaiters;
    private readonly bool _eventq;
    private readonly int _vector = -1;
    private volatile bool _stopping;
    private volatile Exception? _failure;

    /// <summary>Serves channels over <paramref name="client"/>, which the caller keeps and disposes
    /// after this device.</summary>
    /// <param name="client">A started ISM client.</param>
    /// <param name="options">Wait mode, heartbeat and peer timeout; defaults when null.</param>
    public ChannelDevice(IsmClient client, ChannelOptions? options = null) : this(client, options, null)
    {
    }

    private ChannelDevice(IsmClient client, ChannelOptions? options, IDisposable? owned)
    {
        ArgumentNullException.ThrowIfNull(client);
        Options = options ?? new ChannelOptions();
        Options.Validate();
        if (client.RegionSize < ChannelLayout.MinRegionSize)
            throw new ArgumentException($"the device's regions are {client.RegionSize} bytes; a channel needs at least {ChannelLayout.MinRegionSize}", nameof(client));
        Client = client;
        _owned = owned;
        _eventq = client.Driver.Has(Features.IsmEventVq);
        _offsets = new ulong[_eventq ? client.EventCapacity : 0];
        if (!_eventq && client.Driver.Has(Features.IsmEventIrq) && client.Transport.VectorCount > 0)
            _vector = 0;
        _pump = new Thread(Pump) { IsBackground = true, Name = $"vism-channel-{client.DevId}" };
        _pump.Start();
    }

    /// <summary>Connects to a vism device served on <paramref name="socketPath"/> as a VMM and its
    /// guest driver would (<c>vhost-user</c>: the frontend QEMU is; <c>mmio</c>: the MMIO socket
    /// protocol), starts it and serves channels over it. Disposing the result resets the device.</summary>
    /// <param name="transportKind"><c>vhost-user</c> or <c>mmio</c>.</param>
    /// <param name="socketPath">The device's socket (what <c>vism run</c> logs as its endpoint).</param>
    /// <param name="options">Channel options.</param>
    /// <param name="vectors">Per-region vectors the device was configured with (vhost-user <c>vectors</c>); 0 when it has an eventq.</param>
    /// <param name="clientOptions">The driver's choices; among them <see cref="IsmClientOptions.SpinBeforeBlock"/>,
    /// how long a wait that announced itself spins on the update event before it sleeps (zero: sleep
    /// at once). Defaults when null.</param>
    /// <returns>The channel device.</returns>
    /// <exception cref="DriverTransportException">When the device cannot be reached.</exception>
    /// <exception cref="ArgumentOutOfRangeException">When an option is out of range (checked before anything connects).</exception>
    public static ChannelDevice Open(string transportKind, string socketPath, ChannelOptions? options = null, int vectors = 0, IsmClientOptions? clientOptions = null)
    {
        ArgumentNullException.ThrowIfNull(socketPath);
        options?.Validate(); // before anything connects
        GuestRam? ram = null;
        IDriverTransport? transport = null;
        IsmClient? client = null;
        try
        {
            switch (transportKind)
            {
                case "vhost-user":
                    ram = new GuestRam();
                    transport = VhostUserFrontend.Connect(socketPath, ram, new VhostUserFrontendOptions { VectorCount = vectors });
                    break;
                case "mmio":
                    transport = MmioVmmClient.Connect(socketPath);
                    break;
                default:
                    throw new ArgumentException($"transport kind '{transportKind}' is not one a channel can open (vhost-user, mmio)", nameof(transportKind));
            }
            client = IsmClient.Start(transport, clientOptions);
            return new ChannelDevice(client, options, new Owned(client, ram));
        }
        catch
        {
            if (client is not null) client.Dispose();
            else transport?.Dispose();
            ram?.Dispose();
            throw;
        }
    }

    /// <summary>The ISM client.</summary>
    public IsmClient Client { get; }

    /// <summary>The options.</summary>
    public ChannelOptions Options { get; }

    /// <summary>This device's devid: what a creator passes to <see cref="ListenAsync"/> to offer it a channel.</summary>
    public ulong DevId => Client.DevId;

    /// <summary>Whether waits can block on update events (an eventq, or a vector); without either
    /// every channel of this device polls.</summary>
    public bool HasEvents => _eventq || _vector >= 0;

    /// <summary>Creates a channel for the device <paramref name="peerDevId"/>: ALLOCs a region,
    /// writes the channel header, GRANTs the peer read, write and attach and takes them from every
    /// other device (the default entry). Hand <see cref="ChannelListener.Token"/> to the peer out of
    /// band, then <see cref="ChannelListener.AcceptAsync"/>.</summary>
    /// <param name="peerDevId">The peer's devid; 0 leaves the region open to any device (the default
    /// entry keeps vism's defaults) and accepts the first that joins.</param>
    /// <param name="cancellation">Cancels the set-up.</param>
    /// <returns>The listener.</returns>
    /// <exception cref="ChannelException">When ALLOC or GRANT is refused.</exception>
    public async Task<ChannelListener> ListenAsync(ulong peerDevId, CancellationToken cancellation = default)
    {
        ThrowIfUnusable();
        ulong size = Client.RegionSize;
        AllocReply alloc = await Task.Run(() => Client.Alloc(size), cancellation).ConfigureAwait(false);
        if (!alloc.Ok)
            throw new ChannelException($"ALLOC of a {size}-byte region was refused (ack {alloc.Ack})");
        try
        {
            IsmChannel channel = IsmChannel.Create(this, alloc.Offset, alloc.Token, size, peerDevId);
            if (peerDevId != 0)
            {
                byte ack = await Task.Run(() => Client.Grant(alloc.Offset, peerDevId, IsmPermissions.Read | IsmPermissions.Write | IsmPermissions.Attach), cancellation).ConfigureAwait(false);
                if (ack == IsmControl.AckOk)
                    ack = await Task.Run(() => Client.Grant(alloc.Offset, 0, IsmPermissions.None), cancellation).ConfigureAwait(false);
                if (ack != IsmControl.AckOk)
                    throw new ChannelException($"GRANT limiting the region to devid {peerDevId} was refused (ack {ack})");
            }
            Register(channel);
            return new ChannelListener(channel);
        }
        catch
        {
            _channels.TryRemove(alloc.Offset, out _);
            Client.Detach(alloc.Offset);
            throw;
        }
    }

    /// <summary>Joins the channel whose region has <paramref name="token"/>: ATTACHes it, checks the
    /// header (and that it was offered to this device), announces this side and notifies the creator.</summary>
    /// <param name="token">The token the creator handed over.</param>
    /// <param name="cancellation">Cancels the set-up.</param>
    /// <returns>The open channel.</returns>
    /// <exception cref="ChannelException">When ATTACH is refused or the region holds no channel for this device.</exception>
    public async Task<IsmChannel> ConnectAsync(ulong token, CancellationToken cancellation = default)
    {
        ThrowIfUnusable();
        AttachReply attach = await Task.Run(() => Client.Attach(token), cancellation).ConfigureAwait(false);
        if (!attach.Ok)
            throw new ChannelException($"ATTACH of token 0x{token:x} was refused (ack {attach.Ack}): no such region, or it was not granted to devid {DevId}");
        try
        {
            IsmChannel channel = IsmChannel.Join(this, attach.Offset, token, Client.RegionSize);
            Register(channel);
            channel.Announce();
            return channel;
        }
        catch
        {
            Client.Detach(attach.Offset);
            throw;
        }
    }

    private void Register(IsmChannel channel)
    {
        _channels[channel.Offset] = channel;
        if (_vector >= 0 && Client.EventVector(channel.Offset, (ulong)_vector) != IsmControl.AckOk)
            throw new ChannelException($"EVENT_VECTOR binding the channel region at 0x{channel.Offset:x} to vector {_vector} was refused");
    }

    /// <summary>Forgets a channel and DETACHes its region (the region is freed once the peer has detached too).</summary>
    internal void Release(IsmChannel channel)
    {
        _channels.TryRemove(channel.Offset, out _);
        if (_failure is not null || _stopping)
            return; // the connection is gone or going: the device's reset releases the region
        try
        {
            Client.Detach(channel.Offset);
        }
        catch (Exception ex) when (ex is DriverTransportException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Writes the region's notify slot (serialised: two channels, or a channel's reader and
    /// writer, may notify at once).</summary>
    internal void Notify(ulong offset)
    {
        lock (_notifyLock)
            Client.Notify(offset);
    }

    private void ThrowIfUnusable()
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        if (_failure is { } f)
            throw new ChannelException("the device failed: " + f.Message, f);
    }

    /// <summary>A channel's blocking wait, after it announced the wait and found the channel not
    /// ready: takes the device's update events on this thread until one is for
    /// <paramref name="channel"/>, passing the others on; when another thread takes them already,
    /// blocks on <paramref name="signal"/> instead (that thread passes this channel's events on).
    /// Returns at the latest after a heartbeat interval, so the caller re-checks the channel.</summary>
    internal void WaitForEvent(IsmChannel channel, SemaphoreSlim signal)
    {
        if (_stopping || _failure is not null)
            return;
        // Counted before the try, so a taker that leaves after it sees this waiter and hands over.
        Interlocked.Increment(ref _blockedWaiters);
        if (!_taker.TryEnter())
        {
            try
            {
                signal.Wait(Options.HeartbeatInterval);
            }
            finally
            {
                Interlocked.Decrement(ref _blockedWaiters);
            }
            return;
        }
        Interlocked.Decrement(ref _blockedWaiters);
        try
        {
            if (signal.Wait(0))
                return; // an event for this channel was passed on before this thread took over
            // The peer's notify (or this side's own, just sent) woke vism's device loop; where every
            // core is busy (two spinning peers on two cores) the loop runs only when one of them
            // gives its core up: do so once now, before spinning on the eventq.
            Thread.Yield();
            long deadline = Stopwatch.GetTimestamp() + (long)(Options.HeartbeatInterval.TotalSeconds * Stopwatch.Frequency);
            while (!_stopping)
            {
                TimeSpan left = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), deadline);
                if (left <= TimeSpan.Zero || TakeEvents(left, channel, signal))
                    return;
            }
        }
        catch (Exception ex) when (ex is DriverTransportException or ObjectDisposedException or InvalidOperationException)
        {
            DeviceFailed(ex);
        }
        finally
        {
            _taker.Exit();
            HandOver();
        }
    }

    /// <summary>An async wait: blocks on <paramref name="signal"/> while whoever takes the device's
    /// events (a blocking waiter, else the pump) passes them on.</summary>
    internal async ValueTask WaitSignalAsync(SemaphoreSlim signal, CancellationToken cancellation)
    {
        if (_stopping || _failure is not null)
            return;
        Interlocked.Increment(ref _asyncWaiters);
        try
        {
            WakePump();
            await signal.WaitAsync(Options.HeartbeatInterval, cancellation).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _asyncWaiters);
        }
    }

    /// <summary>After a taker left: wakes the blocked waiters (one of them takes over) and, for
    /// async waiters, the pump.</summary>
    private void HandOver()
    {
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _blockedWaiters) > 0)
            foreach (IsmChannel channel in _channels.Values)
                channel.Signal();
        if (Volatile.Read(ref _asyncWaiters) > 0)
            WakePump();
    }

    private void WakePump() => IsmChannel.SetSignal(_pumpWake);

    /// <summary>Waits up to <paramref name="timeout"/> for one update event (the client spins on it
    /// before it blocks) and signals the channels it is for, but not the caller's own wait
    /// (<paramref name="self"/>, <paramref name="selfSignal"/>); a zero timeout takes only what is
    /// there. Call with <see cref="_taker"/> held.</summary>
    /// <returns>Whether an event for <paramref name="self"/> arrived.</returns>
    private bool TakeEvents(TimeSpan timeout, IsmChannel? self, SemaphoreSlim? selfSignal)
    {
        bool mine = false;
        if (_eventq && timeout == TimeSpan.Zero)
        {
            foreach (ulong offset in Client.DrainEvents())
                mine |= Deliver(offset, self, selfSignal);
        }
        else if (_eventq)
        {
            int n = Client.WaitEvent(_offsets, timeout);
            if (n > _offsets.Length) // more regions than the buffer holds: every channel re-checks
                return SignalAll(self, selfSignal);
            for (int i = 0; i < n; i++)
                mine |= Deliver(_offsets[i], self, selfSignal);
        }
        else if (_vector >= 0)
        {
            bool fired = timeout == TimeSpan.Zero
                ? Client.Transport.WaitVector(_vector, TimeSpan.Zero, TimeSpan.Zero)
                : Client.WaitVector(_vector, timeout);
            if (fired) // every channel is bound to the one vector
                return SignalAll(self, selfSignal);
        }
        else if (timeout > TimeSpan.Zero)
        {
            Thread.Sleep(timeout); // no events: the channels poll, this only paces the caller
        }
        return mine;
    }

    private bool Deliver(ulong offset, IsmChannel? self, SemaphoreSlim? selfSignal)
    {
        if (!_channels.TryGetValue(offset, out IsmChannel? channel))
            return false;
        channel.Signal(channel == self ? selfSignal : null);
        return channel == self;
    }

    private bool SignalAll(IsmChannel? self, SemaphoreSlim? selfSignal)
    {
        foreach (IsmChannel channel in _channels.Values)
            channel.Signal(channel == self ? selfSignal : null);
        return self is not null;
    }

    private void DeviceFailed(Exception ex)
    {
        if (_stopping)
            return;
        _failure ??= ex;
        foreach (IsmChannel channel in _channels.Values)
            channel.Fail(new ChannelException("the device connection failed: " + ex.Message, ex));
    }

    /// <summary>The device's thread: heartbeats every interval (bump this side's counters, check the
    /// peers'), takes the device's events while async waits are pending and no blocking waiter
    /// does, and otherwise takes what piled up once per interval (so eventq buffers return).</summary>
    private void Pump()
    {
        TimeSpan interval = Options.HeartbeatInterval;
        long lastBeat = 0;
        try
        {
            while (!_stopping)
            {
                TimeSpan wait = interval - Stopwatch.GetElapsedTime(lastBeat);
                if (wait > TimeSpan.Zero)
                {
                    if (Volatile.Read(ref _asyncWaiters) == 0 || Volatile.Read(ref _blockedWaiters) != 0 || !TryTakeEventsAsPump(wait))
                        _pumpWake.Wait(wait);
                }
                if (Stopwatch.GetElapsedTime(lastBeat) >= interval)
                {
                    lastBeat = Stopwatch.GetTimestamp();
                    foreach (IsmChannel channel in _channels.Values)
                        channel.Beat(lastBeat);
                    TryTakeEventsAsPump(TimeSpan.Zero);
                }
            }
        }
        catch (Exception ex) when (ex is DriverTransportException or ObjectDisposedException or InvalidOperationException)
        {
            DeviceFailed(ex);
        }
    }

    /// <summary>The pump takes the device's events for up to <paramref name="timeout"/> (zero: what is
    /// there) unless another thread takes them now, then hands over.</summary>
    /// <returns>False when another thread held them.</returns>
    private bool TryTakeEventsAsPump(TimeSpan timeout)
    {
        if (!_taker.TryEnter())
            return false;
        try
        {
            TakeEvents(timeout, null, null);
        }
        finally
        {
            _taker.Exit();
            HandOver();
        }
        return true;
    }

    /// <summary>Stops the event thread; disposes the client (resetting the device, which releases its
    /// regions) when this device opened it. Dispose the channels first to close them cleanly.</summary>
    public void Dispose()
    {
        if (_stopping)
            return;
        _stopping = true;
        foreach (IsmChannel channel in _channels.Values)
            channel.Fail(new ObjectDisposedException(nameof(ChannelDevice)));
        WakePump();
        _pump.Join();
        // A blocking waiter taking events leaves within a heartbeat interval once it sees _stopping.
        _taker.Enter();
        _taker.Exit();
        _owned?.Dispose();
    }

    private sealed class Owned(IsmClient client, GuestRam? ram) : IDisposable
    {
        public void Dispose()
        {
            client.Dispose();
            ram?.Dispose();
        }
    }
}

/// <summary>A channel offered but not yet joined: its <see cref="Token"/> goes to the peer out of band.</summary>
public sealed class ChannelListener : IDisposable
{
    private readonly IsmChannel _channel;
    private bool _accepted;

    internal ChannelListener(IsmChannel channel) => _channel = channel;

    /// <summary>The region's token: what the peer passes to <see cref="ChannelDevice.ConnectAsync"/>.</summary>
    public ulong Token => _channel.Token;

    /// <summary>The region's offset in this device's REGIONS window.</summary>
    public ulong Offset => _channel.Offset;

    /// <summary>Waits until the peer has joined.</summary>
    /// <param name="cancellation">Cancels the wait (the listener stays usable).</param>
    /// <returns>The open channel.</returns>
    public async Task<IsmChannel> AcceptAsync(CancellationToken cancellation = default)
    {
        await _channel.WaitJoinedAsync(cancellation).ConfigureAwait(false);
        _accepted = true;
        return _channel;
    }

    /// <summary>Gives the region up when no peer joined (after a join, dispose the channel instead).</summary>
    public void Dispose()
    {
        if (!_accepted)
            _channel.Dispose();
    }
}
