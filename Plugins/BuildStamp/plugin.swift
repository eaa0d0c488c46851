import Foundation
import PackagePlugin

/// Writes `Stamp.swift` for the target it is applied to (KeyholdBuildStamp) before every build:
/// the commit the tree is at and its date, from `scripts/build-stamp.sh`. The script rewrites the
/// file only when the stamp changed, so an unchanged tree recompiles nothing.
@main
struct BuildStamp: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "stamp")
        let script = context.package.directoryURL.appending(path: "scripts/build-stamp.sh")
        return [
            .prebuildCommand(
                displayName: "Stamping the build with its commit",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [script.path, context.package.directoryURL.path, output.appending(path: "Stamp.swift").path],
                outputFilesDirectory: output
            )
        ]
    }
}
