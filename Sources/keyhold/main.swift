import KeyholdCLI

await KeyholdMain.run()
