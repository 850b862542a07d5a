using Vism.Abstractions;
using Vism.Driver;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// A guest cannot starve the other devices of its loop: through the real vhost-user transport, a
/// hostile driver keeps its controlq full of chains of 32,768 descriptors (one indirect table each),
/// and a neighbour on the same loop still gets its ALLOC and DETACH answered.
/// </summary>
public sealed class FairnessTests
{
    /// <summary>Descriptors per hostile chain: the virtio limit of an indirect table.</summary>
    private const int ChainLength = 32768;

    [Fact]
    public async Task ControlqFloodOfLongChains_DoesNotStarveANeighbourOnTheSameLoop()
    {
        await using var rig = new IsmRig();
        IsmPeer hostile = rig.Add("hostile", loopIndex: 0);
        IsmPeer neighbour = rig.Add("neighbour", loopIndex: 0);
        Assert.Same(hostile.Device.Loop, neighbour.Device.Loop);

        using var flood = new ControlqFlood(hostile);
        Assert.True(flood.WaitServed(8, TimeSpan.FromSeconds(30)), "the hostile device's requests were never answered");

        // Every request of the neighbour is answered while the flood goes on; the old control loop
        // never yielded while the hostile requests completed synchronously (ERR acks), and the
        // neighbour waited for minutes.
        Task<(AllocReply Alloc, byte Detach)> work = Task.Run(() =>
        {
            AllocReply alloc = neighbour.C.Alloc(IsmRig.MiB);
            byte detach = alloc.Ok ? neighbour.C.Detach(alloc.Offset) : IsmControl.AckErr;
            return (alloc, detach);
        });
        Assert.True(await Task.WhenAny(work, Task.Delay(TimeSpan.FromSeconds(10))) == work,
            $"the neighbour's ALLOC and DETACH were not answered in 10 s while the hostile guest flooded ({flood.Served} hostile requests served)");
        (AllocReply allocReply, byte detachAck) = await work;
        Assert.True(allocReply.Ok, neighbour.LogText);
        Assert.Equal(IsmControl.AckOk, detachAck);
        Assert.True(flood.Running, "the flood stopped before the neighbour was served, so the test proved nothing");

        long servedBefore = flood.Served;
        Assert.True(flood.WaitServed(servedBefore + 4, TimeSpan.FromSeconds(30)), "the hostile device stopped being served");
        flood.Dispose();

        // The hostile device was answered (ERR: its requests are oversized), not reset: it got its
        // share, and the neighbour's region came and went exactly once.
        Assert.True(hostile.Counters.Get("err.ctrl.oversized") + hostile.Counters.Get("err.alloc.oversized") > 0);
        Assert.Equal(DeviceStatus.DriverOk, hostile.Device.Status & (DeviceStatus.DriverOk | DeviceStatus.DeviceNeedsReset));
        Assert.Equal(1, neighbour.Counters.Get("ctrl.alloc.ok"));
        Assert.Equal(1, neighbour.Counters.Get("ctrl.detach.ok"));
        Assert.Equal(0, rig.Host.RegionCount);
    }

    /// <summary>A driver thread that keeps every entry of the hostile device's controlq available,
    /// each pointing at one indirect table of <see cref="ChainLength"/> one-byte descriptors.</summary>
    private sealed class ControlqFlood : IDisposable
    {
        private readonly Thread _thread;
        private volatile bool _stop;
        private long _served;

        public ControlqFlood(IsmPeer peer)
        {
            DriverQueue q = peer.C.Driver.Queues[Virtio.ControlQueue];
            GuestRam ram = peer.Ram!;
            ulong table = ram.Allocate(16UL * ChainLength, 16);
            ulong buffer = ram.Allocate(64, 16);
            ram.Span(buffer, 64).Clear();
            ram.Span(buffer, 1)[0] = IsmControl.ClassAlloc;
            for (int i = 0; i < ChainLength - 1; i++)
                q.RawDescriptorAt(table, i, buffer, 1, DriverQueue.DescNext, (ushort)(i + 1));
            q.RawDescriptorAt(table, ChainLength - 1, buffer + 32, 17, DriverQueue.DescWrite, 0);
            for (int d = 0; d < q.Size; d++)
                q.RawDescriptor(d, table, 16 * ChainLength, DriverQueue.DescIndirect, 0);
            ushort start = q.UsedIndex;
            _thread = new Thread(() =>
            {
                ushort avail = q.AvailIndex;
                ushort last = start;
                while (!_stop)
                {
                    ushort used = q.UsedIndex;
                    Interlocked.Add(ref _served, (ushort)(used - last));
                    last = used;
                    bool added = false;
                    while ((ushort)(avail - used) < q.Size)
                    {
                        q.RawPublish((ushort)(avail % q.Size));
                        avail++;
                        added = true;
                    }
                    if (added) peer.C.Transport.Kick(Virtio.ControlQueue);
                    else Thread.Sleep(0);
                }
            }) { IsBackground = true, Name = "controlq-flood" };
            _thread.Start();
        }

        public bool Running => !_stop && _thread.IsAlive;

        /// <summary>Hostile requests answered so far.</summary>
        public long Served => Volatile.Read(ref _served);

        public bool WaitServed(long count, TimeSpan timeout) => SpinWait.SpinUntil(() => Served >= count, timeout);

        public void Dispose()
        {
            _stop = true;
            _thread.Join();
        }
    }
}
