using Vism.Driver;
using Vism.Driver.VhostUser;
using Vism.Native;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>Misconfigured QEMU command lines vism can recognise: the log names the cause and the fix.</summary>
public sealed class OperatorHintTests
{
    private const ulong Page = 4096;

    [Theory]
    [InlineData(1, true)]
    [InlineData(2, false)]
    public async Task AFrontendWithTooFewQueues_IsToldTheEventqIsMissingAndToStartQemuWithNumVqs2(int frontendQueues, bool warned)
    {
        await using var b = new Backend(options: new VhostUserOptions { Vectors = 0 }, device: loop => new FakeVirtioDevice(loop, queueCount: 2));
        using var ram = new GuestRam();
        // As QEMU with num_vqs=1 (or 2): it announces that many queues, then reads the device.
        using VhostUserFrontend f = b.Connect(ram, new VhostUserFrontendOptions { QueueCount = frontendQueues });
        b.WaitFor(() => b.Transport.IsConnected, "the connection");
        f.Request(FrontendRequest.GetFeatures, []);
        const string hint = "the eventq (queue 1) is missing, and the guest driver will fail to find it. Likely cause: QEMU's num_vqs is too small; start it with num_vqs=2";
        if (warned) b.WaitFor(() => b.Log.Contains(hint), "the num_vqs hint");
        Assert.Equal(warned, b.Log.Contains(hint));
        Assert.Equal(warned ? 1 : 0, b.Counters.Get("vhost-user.queues-missing"));
    }

    [Fact]
    public async Task RingsOutsideTheSharedMemory_NameGuestRamWithoutShareOnAsTheLikelyCause()
    {
        await using var b = new Backend();
        using var c = new RawClient(b.SocketPath);
        c.NegotiateAll();
        const ulong user = 0x7f00_0000_0000;
        Assert.Equal(0UL, c.Ack(FrontendRequest.SetVringNum, new VringState(0, 64).ToBytes()));
        // No memory table at all: what QEMU sends when the guest RAM is anonymous (no share=on).
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringAddr, new VringAddress(0, 0, user, user + 0x2000, user + 0x1000, 0).ToBytes()));
        Assert.True(b.Log.Contains("descriptor table at user address 0x7f0000000000 is outside the memory table (the frontend shared no guest memory at all). "
            + "Likely cause: the guest RAM is not shared memory"));
        Assert.True(b.Log.Contains("memory-backend-memfd,id=mem,size=<RAM size>,share=on -machine memory-backend=mem"));
        // With a region that does not hold the rings, the hint says how many were shared.
        using var part = MemFd.Create("ram", 16 * Page);
        Assert.Equal(0UL, c.Ack(FrontendRequest.AddMemReg, new MemoryRegionDescriptor(0x10000, 16 * Page, 0x6000_0000_0000, 0).EncodeSingle(), part));
        Assert.NotEqual(0UL, c.Ack(FrontendRequest.SetVringAddr, new VringAddress(0, 0, user, user + 0x2000, user + 0x1000, 0).ToBytes()));
        Assert.True(b.Log.Contains("is outside the memory table (1 region(s) shared)"));
    }
}
