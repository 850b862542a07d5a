using Vism.Abstractions;
using Vism.Testing;

namespace Vism.Host.Tests;

/// <summary><see cref="OptionsValidationContext.ClaimSocketPath"/>, which every transport uses for its socket.</summary>
public sealed class SocketPathClaimTests
{
    private static readonly DeviceDescription Device = new()
    {
        Name = "ism0", RegionSize = 1 << 20, NotifySize = 1, MaxRegions = 15, RegionsWindowSize = 15UL << 20, NotifyWindowSize = 1 << 20,
    };

    [Fact]
    public void APathOf107BytesIsClaimedAndOneOf108IsAnErrorOnItsKey()
    {
        var context = new RecordingValidationContext(Device);
        string fits = "/tmp/" + new string('a', 102);
        string tooLong = fits + "b";

        Assert.True(context.ClaimSocketPath("socket-path", fits));
        Assert.False(context.ClaimSocketPath("socket-path", tooLong));

        Assert.Equal([fits], context.Endpoints);
        (string key, string message) = Assert.Single(context.Errors);
        Assert.Equal("socket-path", key);
        Assert.Contains("108 bytes", message);
    }

    [Fact]
    public void TheLimitCountsUtf8BytesNotCharacters()
    {
        var context = new RecordingValidationContext(Device);
        string path = "/tmp/" + new string('é', 52); // 57 characters, 109 bytes

        Assert.False(context.ClaimSocketPath("path", path));
        Assert.Empty(context.Endpoints);
        Assert.Contains("109 bytes", Assert.Single(context.Errors).Message);
    }
}
