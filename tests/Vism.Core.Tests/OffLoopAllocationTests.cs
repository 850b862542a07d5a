using Vism.Core.InMemory;

namespace Vism.Core.Tests;

/// <summary>
/// A backend that says <see cref="IMemoryBackend.AllocatesOffLoop"/> has its claims run off the
/// device's loop: a slow claim holds up only the device that asked, never the other devices the
/// loop serves, and an ALLOC abandoned by a reset gives its memory back.
/// </summary>
public sealed class OffLoopAllocationTests
{
    [Fact]
    public async Task ASlowAllocationDoesNotHoldUpTheOtherDevicesOfItsLoop()
    {
        using var rig = new Rig(loops: 1);
        using var slowBackend = new GatedBackend(new InMemoryBackend(64 * Rig.MiB));
        Peer slow = rig.AddWithBackend("slow", slowBackend);
        slowBackend.Loop = slow.Device.Loop;
        Peer a = rig.AddClient("a");
        Peer b = rig.AddClient("b");
        Assert.Same(slow.Device.Loop, a.Device.Loop);

        Task<AllocReply> pending = Task.Run(() => slow.C.Alloc(4096));
        Assert.True(slowBackend.Entered.Wait(Rig.Wait), "the backend was never asked");
        Assert.False(slowBackend.OnLoop, "the claim ran on the device's loop");

        // While the slow claim is held, two devices on the same loop share a region and notify.
        (AllocReply region, ulong peerOffset) = Rig.Share(a, b);
        byte[] message = "while the neighbour allocates"u8.ToArray();
        message.CopyTo(a.C.Region(region.Offset, message.Length));
        Assert.Equal(message, b.C.Region(peerOffset, message.Length).ToArray());
        a.C.Notify(region.Offset);
        Assert.True(b.E.WaitForUpdates(1, Rig.Wait));
        Assert.Equal([peerOffset], b.E.Updates);
        Assert.False(pending.IsCompleted);

        slowBackend.Open();
        AllocReply slowRegion = await pending.WaitAsync(Rig.Wait);
        Assert.True(slowRegion.Ok);
        Assert.Equal(1, slow.Counters.Get("alloc.off-loop"));
        Assert.Equal(2, rig.Host.RegionCount);

        // The region is a normal one: a peer attaches and sees its writes.
        AttachReply attached = a.C.Attach(slowRegion.Token);
        Assert.True(attached.Ok);
        "slow"u8.CopyTo(slow.C.Region(slowRegion.Offset, 4));
        Assert.Equal("slow"u8.ToArray(), a.C.Region(attached.Offset, 4).ToArray());
    }

    [Fact]
    public void AResetWhileTheBackendAllocatesGivesTheMemoryBackAndCompletesNothing()
    {
        using var rig = new Rig(loops: 1);
        var memory = new InMemoryBackend(64 * Rig.MiB);
        using var gated = new GatedBackend(memory);
        Peer p = rig.AddWithBackend("p", gated);
        gated.Loop = p.Device.Loop;
        DriverQueue q = p.C.Driver.Queues[0];
        ushort before = q.UsedIndex;

        Rig.AddAllocRequest(p, 8192);
        p.T.Kick(0);
        Assert.True(gated.Entered.Wait(Rig.Wait));
        p.T.WriteStatus(DeviceStatus.Reset);
        gated.Open();

        Assert.True(VirtqueueTests.WaitUntil(() => p.Counters.Get("alloc.abandoned") == 1));
        p.Settle();
        Assert.Equal(before, q.UsedIndex);       // the abandoned request is never completed
        Assert.Equal(0, rig.Host.RegionCount);   // no region was made of the block
        Assert.Equal(0UL, memory.Usage.Used);    // and its memory went back
        Assert.Equal(0, p.Device.RegionsInUse);

        using IsmClient again = IsmClient.Start(p.T);
        AllocReply reply = again.Alloc(4096);
        Assert.True(reply.Ok);
        Assert.Equal(0UL, reply.Offset); // the abandoned ALLOC held no slot
    }

    [Fact]
    public void TheSlotLimitIsCheckedBeforeTheBackendIsAsked()
    {
        using var rig = new Rig(loops: 1);
        using var gated = new GatedBackend(new InMemoryBackend(64 * Rig.MiB));
        gated.Open();
        Peer p = rig.AddWithBackend("p", gated, window: 4 * Rig.MiB); // 2 region slots, 2 MiB for NOTIFY
        Assert.Equal(2, p.Device.Description.MaxRegions);
        for (int i = 0; i < 2; i++)
            Assert.True(p.C.Alloc(4096).Ok);
        int asked = gated.Calls;

        Assert.Equal(IsmControl.AckErr, p.C.Alloc(4096).Ack);
        Assert.Equal(1, p.Counters.Get("err.alloc.no-slot"));
        Assert.Equal(asked, gated.Calls);
    }

    /// <summary>An in-memory backend whose claims wait at a gate, as a slow tmpfs or fsync would.</summary>
    private sealed class GatedBackend(InMemoryBackend inner) : IMemoryBackend
    {
        private readonly ManualResetEventSlim _gate = new();
        private int _calls;

        public ManualResetEventSlim Entered { get; } = new();

        /// <summary>Whether the last claim ran on the device's loop thread.</summary>
        public bool OnLoop { get; private set; }

        public IDeviceLoop? Loop { get; set; }

        public int Calls => Volatile.Read(ref _calls);

        public bool AllocatesOffLoop => true;

        public ulong PageSize => inner.PageSize;

        public MemoryUsage Usage => inner.Usage;

        public void Open() => _gate.Set();

        public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal failure)
        {
            Interlocked.Increment(ref _calls);
            OnLoop = Loop?.IsOnLoop ?? true;
            Entered.Set();
            if (!_gate.Wait(Rig.Wait))
            {
                failure = new Refusal(IMemoryBackend.AllocNoMemory, "the test never opened the gate");
                return null;
            }
            lock (inner)
                return inner.TryAllocate(length, token, out failure);
        }

        public IReadOnlyList<RecoveredBlock> Recover() => [];

        public void Dispose()
        {
            _gate.Dispose();
            Entered.Dispose();
        }
    }
}
