using System.ComponentModel;
using Vism.Abstractions;

namespace Vism.MyPlugin;

/// <summary>Options of <c>[device.transport] kind = "my-kind"</c>: public settable properties with
/// defaults; <c>Vectors</c> binds the TOML key <c>vectors</c>.</summary>
public sealed class MyOptions : IValidatableOptions
{
    /// <summary>Most per-region interrupt vectors a transport of this kind offers.</summary>
    internal const int MaxVectors = 64;

    /// <summary>Per-region interrupt vectors offered (VIRTIO_ISM_F_EVENT_IRQ).</summary>
    [Description("Per-region interrupt vectors offered to the driver (VIRTIO_ISM_F_EVENT_IRQ), 0..64")]
    public int Vectors { get; set; } = 4;

    /// <summary>Checks the options before anything starts; reports every problem, throws nothing.</summary>
    /// <param name="context">Where errors go (the host adds file, line and column).</param>
    public void Validate(OptionsValidationContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (Vectors is < 0 or > MaxVectors)
            context.Error("vectors", $"{Vectors} is not in 0..{MaxVectors}");
        // A transport that listens on a Unix socket claims it here, so that two devices cannot share
        // one and a path too long for a socket address is reported before anything starts:
        //   context.ClaimSocketPath("socket-path", Path.Combine(context.Host.SocketDirectory, $"{context.Device.Name}.my.sock"));
    }
}
